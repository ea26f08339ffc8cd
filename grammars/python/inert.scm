; Places where a completion cannot help: the cursor strictly inside one of these asks for nothing
; on an automatic trigger.

(string) @string
(comment) @comment

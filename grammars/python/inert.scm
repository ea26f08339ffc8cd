; Places where a completion cannot help: the cursor strictly inside one of these asks for nothing
; on an automatic trigger.

(string) @string
(comment) @comment

; @code: an f-string's `{...}`, code inside a string, where requests are made again.
(interpolation) @code

; Places where a completion cannot help (see python/inert.scm): interpreted and raw (backquoted)
; strings, runes, comments.

(interpreted_string_literal) @string
(raw_string_literal) @string
(rune_literal) @string
(comment) @comment

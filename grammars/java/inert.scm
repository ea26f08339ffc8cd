; Places where a completion cannot help (see python/inert.scm): strings (text blocks included),
; characters, comments. @code: an embedded expression of a string template.

(string_literal) @string
(character_literal) @string
(line_comment) @comment
(block_comment) @comment

(string_interpolation) @code

; Places where a completion cannot help (see python/inert.scm).

(string_literal) @string
(raw_string_literal) @string
(char_literal) @string
(line_comment) @comment
(block_comment) @comment

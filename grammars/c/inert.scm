; Places where a completion cannot help (see python/inert.scm); shared with C++.

(string_literal) @string
(char_literal) @string
(system_lib_string) @string
(comment) @comment

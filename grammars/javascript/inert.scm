; Places where a completion cannot help (see python/inert.scm); shared with TypeScript and TSX.
; @code: code inside a string (a template literal's `${...}`), where requests are made again.

(string) @string
(template_string) @string
(regex) @string
(comment) @comment
(html_comment) @comment

(template_substitution) @code

; JSX elements, for the grammars that parse them (javascript, typescriptreact): a blank line in
; an empty element asks for several lines, and a completion ends with the element it began in.

(jsx_element) @block

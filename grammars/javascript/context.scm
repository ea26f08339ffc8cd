; JavaScript, and the part of TypeScript and TSX shared with it (the typescript sources load
; this file before typescript/context.scm). Captures as in python/context.scm.

(import_statement) @import

(function_declaration) @scope
(generator_function_declaration) @scope
(class_declaration) @scope
(class) @scope
(method_definition) @scope
(function_expression) @scope
(arrow_function) @scope

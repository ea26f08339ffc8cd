; Captures as in python/context.scm. The package clause counts as an import: it is the line that
; says which package the file belongs to, kept when the window cuts it off.

(package_clause) @import
(import_declaration) @import

(function_declaration) @scope
(method_declaration) @scope
(type_declaration) @scope
(func_literal) @scope

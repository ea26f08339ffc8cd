; What the context window keeps when a cut would lose it.
; @import: top-level statements that bring names into the file (restored when cut off).
; @scope: definitions whose header line is kept when the cursor is inside them.

(import_statement) @import
(import_from_statement) @import
(future_import_statement) @import

(function_definition) @scope
(class_definition) @scope
(decorated_definition) @scope

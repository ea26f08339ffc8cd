; Captures as in python/context.scm. The package declaration counts as an import (see
; go/context.scm).

(package_declaration) @import
(import_declaration) @import

(class_declaration) @scope
(interface_declaration) @scope
(enum_declaration) @scope
(record_declaration) @scope
(annotation_type_declaration) @scope
(method_declaration) @scope
(constructor_declaration) @scope
(compact_constructor_declaration) @scope
(lambda_expression) @scope

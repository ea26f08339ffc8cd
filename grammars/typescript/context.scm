; TypeScript and TSX on top of javascript/context.scm.

(interface_declaration) @scope
(enum_declaration) @scope
(abstract_class_declaration) @scope
(internal_module) @scope
(module) @scope

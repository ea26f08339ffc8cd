; TypeScript and TSX on top of javascript/blocks.scm.

[
  (interface_body)
  (enum_body)
  (object_type)
  (interface_declaration)
  (enum_declaration)
  (abstract_class_declaration)
  (internal_module)
  (module)
] @block

; Syntactic units a multi-line completion may not run past (see python/blocks.scm).

[
  (block)
  (class_body)
  (interface_body)
  (enum_body)
  (annotation_type_body)
  (constructor_body)
  (switch_block)
  (switch_block_statement_group)
  (array_initializer)
  (class_declaration)
  (interface_declaration)
  (enum_declaration)
  (record_declaration)
  (method_declaration)
  (constructor_declaration)
  (lambda_expression)
] @block

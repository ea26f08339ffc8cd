; Syntactic units a multi-line completion may not run past (see python/blocks.scm); shared with
; TypeScript and TSX.

[
  (statement_block)
  (class_body)
  (switch_body)
  (switch_case)
  (switch_default)
  (object)
  (function_declaration)
  (generator_function_declaration)
  (class_declaration)
  (method_definition)
  (function_expression)
  (arrow_function)
] @block

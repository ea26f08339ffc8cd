; Syntactic units a multi-line completion may not run past (see python/blocks.scm).

[
  (block)
  (field_declaration_list)
  (interface_type)
  (literal_value)
  (expression_case)
  (type_case)
  (default_case)
  (communication_case)
  (import_spec_list)
  (function_declaration)
  (method_declaration)
  (func_literal)
  (type_declaration)
  (const_declaration)
  (var_declaration)
] @block

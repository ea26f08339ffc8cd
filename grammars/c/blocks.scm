; Syntactic units a multi-line completion may not run past (see python/blocks.scm); shared with
; C++.

[
  (compound_statement)
  (field_declaration_list)
  (enumerator_list)
  (initializer_list)
  (case_statement)
  (function_definition)
  (struct_specifier)
  (union_specifier)
  (enum_specifier)
] @block

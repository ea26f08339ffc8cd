; Syntactic units a multi-line completion may not run past (see python/blocks.scm).

[
  (block)
  (declaration_list)
  (field_declaration_list)
  (enum_variant_list)
  (match_block)
  (function_item)
  (impl_item)
  (trait_item)
  (struct_item)
  (enum_item)
  (mod_item)
  (closure_expression)
] @block

; C++ on top of c/blocks.scm.

[
  (declaration_list)
  (class_specifier)
  (namespace_definition)
  (lambda_expression)
  (try_statement)
  (catch_clause)
] @block

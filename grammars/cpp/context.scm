; C++ on top of c/context.scm.

(class_specifier body: (_)) @scope
(namespace_definition) @scope
(template_declaration) @scope
(lambda_expression) @scope

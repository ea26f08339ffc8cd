; Syntactic units a multi-line completion may not run past: the completion is truncated at
; the end of the smallest @block that starts before the cursor and ends inside the completion.
; @opener: a node whose last line ending in ":" opens a body (multi-line suggestions there).

[
  (function_definition)
  (class_definition)
  (if_statement)
  (elif_clause)
  (else_clause)
  (for_statement)
  (while_statement)
  (with_statement)
  (try_statement)
  (except_clause)
  (finally_clause)
  (match_statement)
  (case_clause)
  (block)
] @block

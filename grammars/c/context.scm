; C, and the part of C++ shared with it (the cpp source loads this file before
; cpp/context.scm). Captures as in python/context.scm, and
; @section: a top-level node whose own children are searched for imports too (an include guard's
; `#ifndef` holds every `#include` of a header).

(preproc_include) @import

(preproc_ifdef) @section
(preproc_if) @section

(function_definition) @scope
(struct_specifier body: (_)) @scope
(union_specifier body: (_)) @scope
(enum_specifier body: (_)) @scope

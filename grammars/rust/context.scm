; @import: top-level items that bring names into the file (restored when cut off).
; @scope: items whose header line is kept when the cursor is inside them.

(use_declaration) @import
(extern_crate_declaration) @import

(function_item) @scope
(impl_item) @scope
(trait_item) @scope
(mod_item) @scope
(struct_item) @scope
(enum_item) @scope

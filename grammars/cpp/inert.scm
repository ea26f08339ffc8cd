; C++ on top of c/inert.scm: raw strings (`R"(...)"`).

(raw_string_literal) @string

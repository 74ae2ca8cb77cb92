"""Course material: the homework notebooks' checkers and data helpers (hints for students)."""

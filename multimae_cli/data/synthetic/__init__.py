"""The embedded synthetic scenes: a ray-traced room renderer (`scenes`, `render`, `raytrace`, `materials`) and
the files and streams made from it (`io`)."""

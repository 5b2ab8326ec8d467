if size :over 10000000 { discard; } elsif size :under 1 { discard; } else { keep; }

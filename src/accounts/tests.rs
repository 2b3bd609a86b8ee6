//! Unit tests of account sync (filled below).

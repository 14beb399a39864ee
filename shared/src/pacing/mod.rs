//! Pacing engine: how many clicks may go now, and when the next release can happen. Pure: no I/O.

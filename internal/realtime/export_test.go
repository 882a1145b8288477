package realtime

import "time"

// SetClock replaces the clock that decides token expiry.
func SetClock(s *Server, now func() time.Time) { s.now = now }

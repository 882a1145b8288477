package blob

import "sync"

// dirSync coalesces fsyncs of one directory: an fsync covers every entry
// made in the directory before it began, so a caller waits for the next
// fsync to begin after its call and shares it with every caller waiting
// meanwhile.
type dirSync struct {
	fsync func() error // fsyncs the directory

	mu      sync.Mutex
	cond    *sync.Cond // on mu
	running bool       // an fsync is in progress
	started uint64     // fsyncs begun
	done    uint64     // fsyncs finished; done <= started
	err     error      // the last finished fsync's error
	waiting int        // callers in cond.Wait
}

// sync returns once an fsync of the directory that began after the call
// has finished, with that fsync's error (or a later one's).
func (s *dirSync) sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// An fsync in progress may have begun before the caller's entry: only
	// the next one to begin covers it.
	want := s.started + 1
	for s.done < want {
		if s.running {
			s.waiting++
			s.cond.Wait()
			s.waiting--
			continue
		}
		s.running = true
		s.started++
		n := s.started
		s.mu.Unlock()
		err := s.fsync()
		s.mu.Lock()
		s.running = false
		s.done, s.err = n, err
		s.cond.Broadcast()
	}
	return s.err
}

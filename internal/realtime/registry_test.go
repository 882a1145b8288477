package realtime

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

func TestRegistryLimitAndRemove(t *testing.T) {
	t.Parallel()
	r := newRegistry()
	a, b, c := &session{}, &session{}, &session{}
	for _, s := range []*session{a, b} {
		if err := r.add("u1", s, 2); err != nil {
			t.Fatalf("add: %v", err)
		}
	}
	if err := r.add("u1", a, 2); err != nil {
		t.Errorf("adding a registered socket again = %v, want a no-op", err)
	}
	if err := r.add("u1", c, 2); !errors.Is(err, errTooManyConns) {
		t.Errorf("third socket with limit 2: %v, want errTooManyConns", err)
	}
	if err := r.add("u2", c, 2); err != nil {
		t.Errorf("the limit is per user: %v", err)
	}
	r.remove("u1", a)
	r.remove("u1", a) // no-op
	if err := r.add("u1", c, 2); err != nil {
		t.Errorf("after a socket left: %v", err)
	}
	if got := r.sockets("u1"); len(got) != 2 || !slices.Contains(got, b) || !slices.Contains(got, c) {
		t.Errorf("u1 sockets = %v, want b and c", got)
	}
	r.remove("u1", b)
	r.remove("u1", c)
	r.remove("u2", c)
	if n := r.count(); n != 0 {
		t.Errorf("count after removing all = %d", n)
	}
	for i := range r.shards {
		if len(r.shards[i].users) != 0 {
			t.Errorf("shard %d keeps empty user sets: %v", i, r.shards[i].users)
		}
	}
}

// TestRegistryChurn is the race the issue measured in a room-based adapter:
// a user's old socket leaves while a new one joins, many times at once.
// After every pair the new socket must be registered (only its own lane
// removes it), and at the end every live socket must be.
func TestRegistryChurn(t *testing.T) {
	t.Parallel()
	for _, shape := range []struct {
		name                 string
		users, lanes, rounds int
	}{
		// One socket per user: the set empties on every leave, the window
		// in which a room-based adapter drops the room with the new member.
		{"one socket per user", 64, 1, 400},
		// Many sockets per user: goroutines contend on the same set.
		{"many sockets per user", 8, 16, 200},
	} {
		t.Run(shape.name, func(t *testing.T) {
			t.Parallel()
			r := newRegistry()
			var (
				wg   sync.WaitGroup
				mu   sync.Mutex
				live = make([][]*session, shape.users)
				lost atomic.Int64
			)
			for u := range shape.users {
				user := fmt.Sprint("u", u)
				for range shape.lanes {
					wg.Go(func() {
						cur := &session{}
						if err := r.add(user, cur, 0); err != nil {
							t.Error(err)
							return
						}
						for range shape.rounds {
							next, old := &session{}, cur
							var pair sync.WaitGroup
							pair.Go(func() { r.remove(user, old) })
							pair.Go(func() {
								if err := r.add(user, next, 0); err != nil {
									t.Error(err)
								}
							})
							pair.Wait()
							if !slices.Contains(r.sockets(user), next) {
								lost.Add(1)
								_ = r.add(user, next, 0) // keep going; the count fails the test
							}
							cur = next
						}
						mu.Lock()
						live[u] = append(live[u], cur)
						mu.Unlock()
					})
				}
			}
			wg.Wait()
			if n := lost.Load(); n != 0 {
				t.Errorf("%d of %d joins lost", n, shape.users*shape.lanes*shape.rounds)
			}
			for u := range shape.users {
				got := r.sockets(fmt.Sprint("u", u))
				if len(got) != shape.lanes {
					t.Errorf("user u%d has %d registered sockets, want %d", u, len(got), shape.lanes)
				}
				for _, s := range live[u] {
					if !slices.Contains(got, s) {
						t.Errorf("user u%d: a live socket is not registered", u)
					}
				}
			}
		})
	}
}

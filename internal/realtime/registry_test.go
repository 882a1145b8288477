package realtime

import (
	"errors"
	"fmt"
	"slices"
	"sync"
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
// a user's old socket leaves while a new one joins, many times at once. Every
// socket that joined and did not leave must be registered afterwards.
func TestRegistryChurn(t *testing.T) {
	t.Parallel()
	r := newRegistry()
	const (
		users   = 8   // few users, so goroutines contend on the same sets
		lanes   = 16  // goroutines per user, each owning one live socket
		rounds  = 300 // 8*16*300 = 38,400 leave/join pairs
		maxConn = 0   // the limit is tested above; here only membership
	)
	live := make([][]*session, users)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for u := range users {
		user := fmt.Sprint("u", u)
		for range lanes {
			wg.Go(func() {
				cur := &session{}
				if err := r.add(user, cur, maxConn); err != nil {
					t.Error(err)
					return
				}
				for range rounds {
					next := &session{}
					var pair sync.WaitGroup
					old := cur
					pair.Go(func() { r.remove(user, old) })
					pair.Go(func() {
						if err := r.add(user, next, maxConn); err != nil {
							t.Error(err)
						}
					})
					pair.Wait()
					cur = next
				}
				mu.Lock()
				live[u] = append(live[u], cur)
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	for u := range users {
		got := r.sockets(fmt.Sprint("u", u))
		if len(got) != lanes {
			t.Errorf("user u%d has %d registered sockets, want %d", u, len(got), lanes)
		}
		for _, s := range live[u] {
			if !slices.Contains(got, s) {
				t.Errorf("user u%d: a live socket is not registered (a lost join)", u)
			}
		}
	}
}

package realtime

import (
	"errors"
	"hash/maphash"
	"sync"
)

// errTooManyConns is returned by registry.add when the user already has the
// maximum number of sockets.
var errTooManyConns = errors.New("too many connections")

// registryShards spreads users over independent locks so that connects,
// disconnects and deliveries of different users rarely contend.
const registryShards = 64

// registry maps a user id to the set of that user's connected sockets; it is
// how an event for room "user:<sub>" finds its sockets.
//
// Membership changes are single operations under one shard lock: add checks
// the limit and inserts, remove deletes and drops an emptied set, both on the
// same map entry. There is no separate "create room"/"delete room" step that
// a concurrent add could slip between, which is how a join gets lost in
// room-based adapters.
type registry struct {
	seed   maphash.Seed
	shards [registryShards]registryShard
}

type registryShard struct {
	mu    sync.RWMutex
	users map[string]map[*session]struct{}
}

func newRegistry() *registry {
	r := &registry{seed: maphash.MakeSeed()}
	for i := range r.shards {
		r.shards[i].users = make(map[string]map[*session]struct{})
	}
	return r
}

func (r *registry) shard(userID string) *registryShard {
	return &r.shards[maphash.String(r.seed, userID)%registryShards]
}

// add registers s for userID unless the user already has max sockets
// (max <= 0 means no limit). Adding a registered socket again is a no-op.
func (r *registry) add(userID string, s *session, max int) error {
	sh := r.shard(userID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	set := sh.users[userID]
	if _, ok := set[s]; ok {
		return nil
	}
	if max > 0 && len(set) >= max {
		return errTooManyConns
	}
	if set == nil {
		set = make(map[*session]struct{})
		sh.users[userID] = set
	}
	set[s] = struct{}{}
	return nil
}

// remove unregisters s; removing an unregistered socket is a no-op.
func (r *registry) remove(userID string, s *session) {
	sh := r.shard(userID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	set := sh.users[userID]
	delete(set, s)
	if len(set) == 0 {
		delete(sh.users, userID)
	}
}

// sockets returns a snapshot of userID's sockets, safe to use after the lock
// is released: a socket removed meanwhile refuses the event itself.
func (r *registry) sockets(userID string) []*session {
	sh := r.shard(userID)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	set := sh.users[userID]
	if len(set) == 0 {
		return nil
	}
	out := make([]*session, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	return out
}

// count returns the number of registered sockets over all users.
func (r *registry) count() int {
	n := 0
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.RLock()
		for _, set := range sh.users {
			n += len(set)
		}
		sh.mu.RUnlock()
	}
	return n
}

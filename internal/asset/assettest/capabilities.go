package assettest

import "fmt"

// Capabilities are the guarantees of the contract that a store can give
// only when its server does. A store declares those of the server it runs
// on, found at run time; a case relying on one it lacks is skipped there
// and runs wherever the server has it.
type Capabilities struct {
	// AtomicGuardedUpdates: a guarded update (Finish, RecordAttempt,
	// Reprocess, EventSent) tests its guard and writes in one atomic step,
	// so of concurrent calls on one asset exactly one applies.
	AtomicGuardedUpdates bool
	// Server names the server, printed with every skipped case.
	Server string
}

// Every is what a store whose server gives every guarantee declares.
var Every = Capabilities{AtomicGuardedUpdates: true}

// need is a capability a case relies on.
type need struct {
	name string
	has  func(Capabilities) bool
	why  string // what the case checks that a store without it cannot give
}

// needs lists, by case name, the cases that rely on a capability.
var needs = map[string]need{
	"Finish/ConcurrentOneWins": {
		name: "AtomicGuardedUpdates",
		has:  func(c Capabilities) bool { return c.AtomicGuardedUpdates },
		why:  "concurrent Finish calls for one job must have exactly one winner",
	},
}

// lacks returns why the case named so cannot run on a store with c, or "".
func (c Capabilities) lacks(name string) string {
	n, ok := needs[name]
	if !ok || n.has(c) {
		return ""
	}
	return fmt.Sprintf("skipped on %s, which lacks %s: %s", c.Server, n.name, n.why)
}

package httpapi_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/httpapi"
	"github.com/klectr/klectr/internal/idempotency"
	"github.com/klectr/klectr/internal/queue"
)

// In-memory fakes of the interfaces httpapi declares. Each records its calls
// so that a test can assert what the API asked of its backends — and, as
// important, that a refused request asked nothing.

var (
	_ httpapi.Assets  = (*fakeAssets)(nil)
	_ httpapi.Intake  = (*fakeIntake)(nil)
	_ httpapi.Jobs    = (*fakeJobs)(nil)
	_ httpapi.Limiter = (*fakeLimiter)(nil)
)

// listCall is one call of Assets.List.
type listCall struct {
	UserID string
	Query  asset.ListQuery
}

// fakeAssets is a map of assets. List keeps asset.Store's contract as the
// stores do: the user's own assets only, filtered by status, newest first
// (createdAt, then id, descending), at most Limit, with an opaque cursor it
// issued (anything else is asset.ErrInvalidCursor). It records every call.
type fakeAssets struct {
	mu     sync.Mutex
	byID   map[string]*asset.Asset
	err    error // returned by List
	getErr error // returned by Get when set
	lists  []listCall
}

func newFakeAssets() *fakeAssets { return &fakeAssets{byID: map[string]*asset.Asset{}} }

func (f *fakeAssets) put(a *asset.Asset) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := *a
	f.byID[a.ID] = &c
}

func (f *fakeAssets) Get(_ context.Context, id string) (*asset.Asset, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.getErr != nil {
		return nil, f.getErr
	}
	a, ok := f.byID[id]
	if !ok {
		return nil, asset.ErrNotFound
	}
	c := *a
	return &c, nil
}

func (f *fakeAssets) List(_ context.Context, userID string, q asset.ListQuery) (asset.Page, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists = append(f.lists, listCall{userID, q})
	if f.err != nil {
		return asset.Page{}, f.err
	}
	newer := func(a, b *asset.Asset) int { // newest first
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	}
	var after *asset.Asset
	if q.After != "" {
		id, ok := strings.CutPrefix(q.After, "fake-cursor:")
		if after = f.byID[id]; !ok || after == nil {
			return asset.Page{}, asset.ErrInvalidCursor
		}
	}
	var mine []*asset.Asset
	for _, a := range f.byID {
		if a.UserID == userID && (q.Status == "" || a.Status == q.Status) && (after == nil || newer(after, a) < 0) {
			c := *a
			mine = append(mine, &c)
		}
	}
	slices.SortFunc(mine, newer)
	var page asset.Page
	if len(mine) > q.Limit {
		mine = mine[:q.Limit]
		page.Next = "fake-cursor:" + mine[len(mine)-1].ID
	}
	page.Assets = mine
	return page, nil
}

func (f *fakeAssets) listCalls() []listCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]listCall(nil), f.lists...)
}

// submission is one call of Intake.Submit.
type submission struct {
	Assets []*asset.Asset
}

// fakeIntake records submissions. Resubmit moves a failed asset of its
// fakeAssets back to processing, resetting what the real intake resets
// (sqlitestore.ReprocessTx): the outcome, the attempts and the owed event.
type fakeIntake struct {
	assets *fakeAssets
	jobs   *fakeJobs // DeleteJob deletes here

	mu          sync.Mutex
	submitErr   error
	submitHook  func(ctx context.Context) error // runs inside Submit when set; its error is returned
	submissions []submission
	once        func(context.Context, []*asset.Asset, idempotency.Claim) (*idempotency.Record, error)
	resubmits   []string // "assetID newJobID"
	resubmitErr error
	replayErr   error
	replays     []string
	now         time.Time
}

func (f *fakeIntake) Submit(ctx context.Context, assets []*asset.Asset) error {
	f.mu.Lock()
	hook, err := f.submitHook, f.submitErr
	f.mu.Unlock()
	if hook != nil {
		if err := hook(ctx); err != nil {
			return err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		return err
	}
	cp := make([]*asset.Asset, len(assets))
	for i, a := range assets {
		c := *a
		cp[i] = &c
	}
	f.submissions = append(f.submissions, submission{cp})
	return nil
}

// SubmitOnce runs once when set; otherwise it is Submit, recorded the same.
func (f *fakeIntake) SubmitOnce(ctx context.Context, assets []*asset.Asset, c idempotency.Claim) (*idempotency.Record, error) {
	f.mu.Lock()
	once := f.once
	f.mu.Unlock()
	if once != nil {
		return once(ctx, assets, c)
	}
	return nil, f.Submit(ctx, assets)
}

func (f *fakeIntake) Resubmit(ctx context.Context, assetID, newJobID string) (*asset.Asset, error) {
	f.mu.Lock()
	f.resubmits = append(f.resubmits, assetID+" "+newJobID)
	rerr := f.resubmitErr
	f.mu.Unlock()
	if rerr != nil {
		return nil, rerr
	}
	a, err := f.assets.Get(ctx, assetID)
	if err != nil {
		return nil, err
	}
	if a.Status != asset.StatusFailed {
		return nil, asset.ErrConflict
	}
	a.Status, a.ProcessingJobID, a.Error, a.AIMetadata, a.ProcessedAt = asset.StatusProcessing, newJobID, nil, nil, nil
	a.Attempts, a.EventID, a.EventPending = 0, "", false
	a.UpdatedAt = f.now
	f.assets.put(a)
	return a, nil
}

func (f *fakeIntake) Replay(_ context.Context, jobID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.replays = append(f.replays, jobID)
	return f.replayErr
}

func (f *fakeIntake) DeleteJob(ctx context.Context, jobID string) error {
	return f.jobs.Delete(ctx, jobID)
}

func (f *fakeIntake) submitted() []submission {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]submission(nil), f.submissions...)
}

// calls counts every call of any method: a refused upload must make none.
func (f *fakeIntake) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.submissions) + len(f.resubmits) + len(f.replays)
}

// fakeJobs is a map of job infos with per-id errors for Delete.
type fakeJobs struct {
	mu        sync.Mutex
	byID      map[string]queue.Info
	counts    map[queue.State]int
	deleteErr map[string]error
	lists     []string // "state limit"
	deleted   []string
}

func newFakeJobs() *fakeJobs {
	return &fakeJobs{byID: map[string]queue.Info{}, counts: map[queue.State]int{}, deleteErr: map[string]error{}}
}

func (f *fakeJobs) Counts(context.Context) (map[queue.State]int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := make(map[queue.State]int, len(f.counts))
	for k, v := range f.counts {
		c[k] = v
	}
	return c, nil
}

func (f *fakeJobs) List(_ context.Context, state queue.State, limit int) ([]queue.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists = append(f.lists, string(state)+" "+strconv.Itoa(limit))
	var out []queue.Info
	for _, i := range f.byID {
		if i.State == state && len(out) < limit {
			out = append(out, i)
		}
	}
	return out, nil
}

func (f *fakeJobs) Get(_ context.Context, id string) (queue.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := f.byID[id]
	if !ok {
		return queue.Info{}, queue.ErrNotFound
	}
	return i, nil
}

func (f *fakeJobs) Delete(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.deleteErr[id]; err != nil {
		return err
	}
	if _, ok := f.byID[id]; !ok {
		return queue.ErrNotFound
	}
	delete(f.byID, id)
	f.deleted = append(f.deleted, id)
	return nil
}

// fakeLimiter refuses every upload when deny is set, asking to wait wait.
type fakeLimiter struct {
	mu    sync.Mutex
	deny  bool
	wait  time.Duration
	users []string
}

func (f *fakeLimiter) Allow(userID string) (bool, time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.users = append(f.users, userID)
	if f.deny {
		return false, f.wait
	}
	return true, 0
}

// set changes a fake under its lock: the server's goroutines read it.
func (f *fakeAssets) set(fn func(*fakeAssets)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeIntake) set(fn func(*fakeIntake)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeJobs) set(fn func(*fakeJobs)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeLimiter) set(fn func(*fakeLimiter)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeIntake) resubmitCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.resubmits...)
}

func (f *fakeIntake) replayCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.replays...)
}

func (f *fakeJobs) listCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.lists...)
}

func (f *fakeJobs) deleteCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.deleted...)
}

func (f *fakeLimiter) asked() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.users...)
}

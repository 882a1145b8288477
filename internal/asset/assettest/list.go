package assettest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
)

// newestFirst sorts as List must: CreatedAt (as stored, to the millisecond),
// then ID, both descending.
func newestFirst(as []*asset.Asset) []*asset.Asset {
	out := slices.Clone(as)
	slices.SortFunc(out, func(a, b *asset.Asset) int {
		if c := cmp.Compare(b.CreatedAt.UnixMilli(), a.CreatedAt.UnixMilli()); c != 0 {
			return c
		}
		return cmp.Compare(b.ID, a.ID)
	})
	return out
}

func list(t *testing.T, s asset.Store, userID string, q asset.ListQuery) asset.Page {
	t.Helper()
	p, err := s.List(context.Background(), userID, q)
	if err != nil {
		t.Fatalf("List(%q, %+v): %v", userID, q, err)
	}
	return p
}

func assertIDs(t *testing.T, what string, got []*asset.Asset, want []*asset.Asset) {
	t.Helper()
	if !slices.Equal(ids(got), ids(want)) {
		t.Fatalf("%s returned\n  %v\nwant\n  %v", what, ids(got), ids(want))
	}
}

// listAll follows Next until the last page, calling between(page number)
// after each page but the last, and checks that only the last page is short
// or has no cursor.
func listAll(t *testing.T, s asset.Store, userID string, q asset.ListQuery, between func(page int)) []*asset.Asset {
	t.Helper()
	var all []*asset.Asset
	for n := 1; ; n++ {
		if n > 100 {
			t.Fatal("List never returned an empty Next")
		}
		p := list(t, s, userID, q)
		all = append(all, p.Assets...)
		if p.Next == "" {
			return all
		}
		if len(p.Assets) != q.Limit {
			t.Fatalf("page %d has %d assets and a Next cursor; want a full page of %d", n, len(p.Assets), q.Limit)
		}
		if between != nil {
			between(n)
		}
		q.After = p.Next
	}
}

func testListOnlyOwner(t *testing.T, s asset.Store) {
	t0 := baseTime()
	var mine []*asset.Asset
	for i := range 3 {
		mine = append(mine, newAsset(fmt.Sprintf("own-u1-%d", i), "u1", t0.Add(time.Duration(i)*time.Second)))
	}
	mustCreate(t, s, mine...)
	mustCreate(t, s,
		newAsset("own-u2-0", "u2", t0),
		newAsset("own-u2-1", "u2", t0.Add(10*time.Second)),
		newAsset("own-U1-0", "U1", t0.Add(20*time.Second)), // user ids are case-sensitive
		newAsset("own-u10-0", "u10", t0.Add(30*time.Second)),
	)
	p := list(t, s, "u1", asset.ListQuery{Limit: 100})
	assertIDs(t, "List(u1)", p.Assets, newestFirst(mine))
	if p.Next != "" {
		t.Fatalf("List(u1) Next = %q on the only page, want empty", p.Next)
	}

	p = list(t, s, "nobody", asset.ListQuery{Limit: 100})
	if len(p.Assets) != 0 || p.Next != "" {
		t.Fatalf("List(nobody) = %v, Next %q; want no assets and no cursor", ids(p.Assets), p.Next)
	}
}

// testListNewestFirst includes assets whose CreatedAt differ below a
// millisecond: stored at millisecond precision they tie, and ID decides.
func testListNewestFirst(t *testing.T, s asset.Store) {
	t0 := baseTime()
	as := []*asset.Asset{
		newAsset("nf-c", "u1", t0.Add(2*time.Millisecond)),
		newAsset("nf-a", "u1", t0.Add(time.Hour)),
		newAsset("nf-e", "u1", t0),
		// Same millisecond as nf-e whether a store truncates or rounds.
		newAsset("nf-b", "u1", t0.Add(40*time.Microsecond)),
		newAsset("nf-d", "u1", t0.Add(-400*time.Microsecond)),
		newAsset("nf-f", "u1", t0.Add(-24*time.Hour)),
		newAsset("nf-g", "u1", t0.Add(2*time.Millisecond)),
	}
	// Several calls, in an order that is neither by time nor by id.
	mustCreate(t, s, as[0], as[1])
	mustCreate(t, s, as[2])
	mustCreate(t, s, as[3], as[4], as[5], as[6])

	got := ids(list(t, s, "u1", asset.ListQuery{Limit: 100}).Assets)
	want := []string{"nf-a", "nf-g", "nf-c", "nf-e", "nf-d", "nf-b", "nf-f"}
	if !slices.Equal(got, want) {
		t.Fatalf("List returned %v, want %v", got, want)
	}
}

func testListStatusFilter(t *testing.T, s asset.Store) {
	t0 := baseTime()
	by := map[asset.Status][]*asset.Asset{}
	var all []*asset.Asset
	statuses := []asset.Status{asset.StatusProcessing, asset.StatusDraft, asset.StatusFailed}
	for i := range 12 {
		a := newAsset(fmt.Sprintf("sf-%02d", i), "u1", t0.Add(time.Duration(i%5)*time.Second))
		a.Status = statuses[i%3]
		by[a.Status] = append(by[a.Status], a)
		all = append(all, a)
	}
	other := newAsset("sf-other", "u2", t0)
	other.Status = asset.StatusDraft
	mustCreate(t, s, append(all, other)...)

	for _, st := range statuses {
		p := list(t, s, "u1", asset.ListQuery{Status: st, Limit: 100})
		assertIDs(t, fmt.Sprintf("List(status=%s)", st), p.Assets, newestFirst(by[st]))
		for _, a := range p.Assets {
			if a.Status != st {
				t.Fatalf("List(status=%s) returned %q with status %s", st, a.ID, a.Status)
			}
		}
	}
	assertIDs(t, "List(any status)", list(t, s, "u1", asset.ListQuery{Limit: 100}).Assets, newestFirst(all))
}

// testListPagination pages through assets that share milliseconds while
// other assets are created between pages: newer ones (before the cursor)
// must not appear, older ones (after it) must, and no original asset is
// repeated or skipped.
func testListPagination(t *testing.T, s asset.Store) {
	ctx := context.Background()
	t0 := baseTime()
	var originals []*asset.Asset
	for i := range 23 {
		// Groups of three share a millisecond; within a group the ids are
		// not in creation order.
		id := fmt.Sprintf("pg-%02d", (i*7)%23)
		originals = append(originals, newAsset(id, "u1", t0.Add(time.Duration(i/3)*time.Millisecond)))
	}
	mustCreate(t, s, originals...)
	for i := range 5 {
		mustCreate(t, s, newAsset(fmt.Sprintf("pg-u2-%d", i), "u2", t0.Add(time.Duration(i)*time.Millisecond)))
	}

	const limit = 5
	expected := slices.Clone(originals)
	q := asset.ListQuery{Limit: limit}
	var seenCursor *asset.Asset
	var all []*asset.Asset
	for n := 1; ; n++ {
		if n > 50 {
			t.Fatal("List never returned an empty Next")
		}
		p := list(t, s, "u1", q)
		all = append(all, p.Assets...)
		if p.Next == "" {
			break
		}
		if len(p.Assets) != limit {
			t.Fatalf("page %d has %d assets and a Next cursor; want %d", n, len(p.Assets), limit)
		}
		seenCursor = p.Assets[len(p.Assets)-1]
		switch n {
		case 1:
			older := newAsset("pg-older", "u1", t0.Add(-time.Hour))
			// Same millisecond as the cursor: a smaller id sorts after it,
			// a larger one before it.
			tieAfter := newAsset(seenCursor.ID[:len(seenCursor.ID)-1], "u1", seenCursor.CreatedAt)
			tieBefore := newAsset(seenCursor.ID+"~", "u1", seenCursor.CreatedAt)
			mustCreate(t, s,
				newAsset("pg-newer-1", "u1", t0.Add(time.Hour)),
				newAsset("pg-newer-2", "u1", t0.Add(time.Hour)),
				older, tieAfter, tieBefore,
			)
			expected = append(expected, older, tieAfter)
		case 3:
			if err := s.Create(ctx, newAsset("pg-newer-3", "u1", t0.Add(2*time.Hour))); err != nil {
				t.Fatal(err)
			}
		}
		q.After = p.Next
	}
	assertIDs(t, "pages", all, newestFirst(expected))
}

func testListPaginationWithStatus(t *testing.T, s asset.Store) {
	t0 := baseTime()
	var drafts, all []*asset.Asset
	statuses := []asset.Status{asset.StatusProcessing, asset.StatusDraft, asset.StatusFailed}
	for i := range 30 {
		a := newAsset(fmt.Sprintf("pgs-%02d", i), "u1", t0.Add(time.Duration(i/4)*time.Millisecond))
		a.Status = statuses[i%3]
		if a.Status == asset.StatusDraft {
			drafts = append(drafts, a)
		}
		all = append(all, a)
	}
	mustCreate(t, s, all...)
	got := listAll(t, s, "u1", asset.ListQuery{Status: asset.StatusDraft, Limit: 4}, nil)
	assertIDs(t, "pages of drafts", got, newestFirst(drafts))
}

// testListLastPage: a page that holds exactly the remaining assets is the
// last one, so clients never fetch an empty page.
func testListLastPage(t *testing.T, s asset.Store) {
	t0 := baseTime()
	var as []*asset.Asset
	for i := range 10 {
		as = append(as, newAsset(fmt.Sprintf("lp-%02d", i), "u1", t0.Add(time.Duration(i)*time.Second)))
	}
	mustCreate(t, s, as...)
	want := newestFirst(as)

	p := list(t, s, "u1", asset.ListQuery{Limit: 10})
	assertIDs(t, "List(limit 10 of 10)", p.Assets, want)
	if p.Next != "" {
		t.Fatalf("List(limit 10 of 10) Next = %q, want empty", p.Next)
	}

	p = list(t, s, "u1", asset.ListQuery{Limit: 5})
	if p.Next == "" {
		t.Fatal("List(limit 5 of 10) Next is empty, want a cursor")
	}
	p = list(t, s, "u1", asset.ListQuery{Limit: 5, After: p.Next})
	assertIDs(t, "second page", p.Assets, want[5:])
	if p.Next != "" {
		t.Fatalf("second and last page Next = %q, want empty", p.Next)
	}
}

func testListLimitBounds(t *testing.T, s asset.Store) {
	t0 := baseTime()
	var as []*asset.Asset
	for i := range 105 {
		as = append(as, newAsset(fmt.Sprintf("lb-%03d", i), "u1", t0.Add(time.Duration(i)*time.Millisecond)))
	}
	mustCreate(t, s, as...)
	want := newestFirst(as)

	for _, tc := range []struct {
		limit, n int
	}{
		{1, 1}, {7, 7}, {100, 100},
		{101, 100}, {1 << 30, 100}, // clamped to the maximum
		{0, 1}, {-3, 1}, // clamped to the minimum
	} {
		p := list(t, s, "u1", asset.ListQuery{Limit: tc.limit})
		assertIDs(t, fmt.Sprintf("List(limit %d)", tc.limit), p.Assets, want[:tc.n])
		if p.Next == "" {
			t.Fatalf("List(limit %d) of 105: Next is empty, want a cursor", tc.limit)
		}
	}
}

func testListBadCursor(t *testing.T, s asset.Store) {
	mustCreate(t, s, newAsset("bc-1", "u1", baseTime()))
	for _, c := range []string{"%%% not a cursor %%%", "\x00"} {
		p, err := s.List(context.Background(), "u1", asset.ListQuery{Limit: 10, After: c})
		if !errors.Is(err, asset.ErrInvalidCursor) {
			t.Fatalf("List(After=%q) = %v, %v; want asset.ErrInvalidCursor", c, ids(p.Assets), err)
		}
	}
}

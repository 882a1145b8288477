// Package assettest is the conformance suite of asset.Store. Every backend
// runs the same cases, so the SQLite store of the embedded mode and the
// MongoDB store of the scaled-out mode keep one contract (DESIGN §6.4). A
// store on a server that lacks a guarantee (Capabilities) skips the case
// that checks it, on that server only, saying why.
package assettest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
)

// TestStore checks every clause of the asset.Store contract against stores
// made by newStore, which give every guarantee (Every): no case is skipped.
func TestStore(t *testing.T, newStore func(t *testing.T) asset.Store) {
	t.Helper()
	TestStoreWith(t, func(t *testing.T) (asset.Store, Capabilities) { return newStore(t), Every })
}

// TestStoreWith checks every clause of the asset.Store contract against
// stores made by newStore. Each call of newStore must return a fresh, empty
// store and release it through t.Cleanup, with the capabilities of the
// server it runs on: a case that relies on one the store lacks is skipped,
// with the reason. Subtests run in parallel, each on its own store.
//
// Where the contract leaves a choice open, the suite pins the one callers rely
// on: times come back in UTC at millisecond precision; Finish, RecordAttempt
// and Reprocess report an unknown id as ErrNotFound (ErrConflict means the
// asset exists in the wrong state); Finish sets UpdatedAt to ProcessedAt;
// Reprocess resets Attempts with the rest of the outcome; a List limit outside
// 1..100 is clamped into it.
func TestStoreWith(t *testing.T, newStore func(t *testing.T) (asset.Store, Capabilities)) {
	t.Helper()
	tests := []testCase{
		{"Create/RoundTrip", testCreateRoundTrip},
		{"Create/AllOrNone", testCreateAllOrNone},
		{"Create/DuplicateInBatch", testCreateDuplicateInBatch},
		{"Create/Empty", testCreateEmpty},
		{"Create/CopiesValues", testCreateCopiesValues},
		{"Get/NotFound", testGetNotFound},
		{"List/OnlyOwner", testListOnlyOwner},
		{"List/NewestFirst", testListNewestFirst},
		{"List/StatusFilter", testListStatusFilter},
		{"List/Pagination", testListPagination},
		{"List/PaginationWithStatus", testListPaginationWithStatus},
		{"List/LastPageHasNoCursor", testListLastPage},
		{"List/LimitBounds", testListLimitBounds},
		{"List/BadCursor", testListBadCursor},
		{"RecordAttempt", testRecordAttempt},
		{"Finish/Draft", testFinishDraft},
		{"Finish/Failed", testFinishFailed},
		{"Finish/WrongJob", testFinishWrongJob},
		{"Finish/AlreadyFinal", testFinishAlreadyFinal},
		{"Finish/NotFound", testFinishNotFound},
		{"Finish/ConcurrentOneWins", testFinishConcurrent},
		{"Reprocess", testReprocess},
		{"Reprocess/Conflict", testReprocessConflict},
		{"PendingEvents/OldestFirst", testPendingEventsOrder},
		{"PendingEvents/EventSentMatchesID", testEventSent},
		{"PendingEvents/AcrossReprocess", testEventSentAcrossReprocess},
		{"Delete", testDelete},
		{"Processing/Pages", testProcessingPages},
		{"BlobsInUse", testBlobsInUse},
		{"Ping", testPing},
		{"Timeline/Monotonic", testTimelineMonotonic},
		{"Timeline/Window", testTimelinesWindow},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, caps := newStore(t)
			if lack := caps.lacks(tt.name); lack != "" {
				t.Skip(lack)
			}
			tt.fn(t, s)
		})
	}
	for name := range needs {
		if !slices.ContainsFunc(tests, func(tc testCase) bool { return tc.name == name }) {
			t.Errorf("assettest: needs names %q, which is no case of the suite", name)
		}
	}
}

type testCase struct {
	name string
	fn   func(t *testing.T, s asset.Store)
}

// baseTime has a sub-millisecond part below half a millisecond, so a store
// that truncates and one that rounds to milliseconds store the same instant.
func baseTime() time.Time {
	return time.Date(2025, 3, 14, 9, 26, 53, 123_456_789, time.UTC)
}

// newAsset is a freshly uploaded asset, processing under job "job-<id>",
// received 40 ms before createdAt and enqueued at it.
func newAsset(id, userID string, createdAt time.Time) *asset.Asset {
	received, enqueued := createdAt.Add(-40*time.Millisecond), createdAt
	return &asset.Asset{
		ID:              id,
		UserID:          userID,
		Status:          asset.StatusProcessing,
		ProcessingJobID: "job-" + id,
		Filename:        "card " + id + ".jpg",
		ContentType:     "image/jpeg",
		Size:            123456,
		SHA256:          strings.Repeat("ab", 32),
		Width:           4032,
		Height:          3024,
		BlobKey:         "blobs/" + id,
		CreatedAt:       createdAt,
		UpdatedAt:       createdAt,
		ReceivedAt:      &received,
		EnqueuedAt:      &enqueued,
	}
}

func mustCreate(t *testing.T, s asset.Store, assets ...*asset.Asset) {
	t.Helper()
	if err := s.Create(context.Background(), assets...); err != nil {
		t.Fatalf("Create: %v", err)
	}
}

func mustGet(t *testing.T, s asset.Store, id string) *asset.Asset {
	t.Helper()
	a, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get(%q): %v", id, err)
	}
	if a == nil {
		t.Fatalf("Get(%q) returned nil and no error", id)
	}
	return a
}

func mustFinish(t *testing.T, s asset.Store, id, jobID string, out asset.Outcome) *asset.Asset {
	t.Helper()
	a, err := s.Finish(context.Background(), id, jobID, out)
	if err != nil {
		t.Fatalf("Finish(%q, %q): %v", id, jobID, err)
	}
	return a
}

// assertNotFound checks that id is not stored.
func assertNotFound(t *testing.T, s asset.Store, id string) {
	t.Helper()
	a, err := s.Get(context.Background(), id)
	if !errors.Is(err, asset.ErrNotFound) {
		t.Fatalf("Get(%q) = %+v, %v; want asset.ErrNotFound", id, a, err)
	}
}

// assertAsset fails with every field of got that differs from want.
func assertAsset(t *testing.T, what string, got, want *asset.Asset) {
	t.Helper()
	if got == nil {
		t.Fatalf("%s: got nil asset, want %q", what, want.ID)
	}
	if d := diffAsset(got, want); len(d) > 0 {
		t.Fatalf("%s: asset %q differs:\n  %s", what, want.ID, strings.Join(d, "\n  "))
	}
}

// assertUnchanged checks that the stored asset still equals before.
func assertUnchanged(t *testing.T, s asset.Store, before *asset.Asset) {
	t.Helper()
	assertAsset(t, "stored asset after the refused call", mustGet(t, s, before.ID), before)
}

// diffAsset compares field by field: times at millisecond precision and in
// UTC, AIMetadata as JSON values (a document store may reorder keys or
// respace), and nil distinct from empty for AIMetadata, Error and ProcessedAt.
func diffAsset(got, want *asset.Asset) []string {
	var d []string
	add := func(field string, g, w any) {
		d = append(d, fmt.Sprintf("%s = %#v, want %#v", field, g, w))
	}
	if got.ID != want.ID {
		add("ID", got.ID, want.ID)
	}
	if got.UserID != want.UserID {
		add("UserID", got.UserID, want.UserID)
	}
	if got.Status != want.Status {
		add("Status", got.Status, want.Status)
	}
	if got.ProcessingJobID != want.ProcessingJobID {
		add("ProcessingJobID", got.ProcessingJobID, want.ProcessingJobID)
	}
	if got.Filename != want.Filename {
		add("Filename", got.Filename, want.Filename)
	}
	if got.ContentType != want.ContentType {
		add("ContentType", got.ContentType, want.ContentType)
	}
	if got.Size != want.Size {
		add("Size", got.Size, want.Size)
	}
	if got.SHA256 != want.SHA256 {
		add("SHA256", got.SHA256, want.SHA256)
	}
	if got.Width != want.Width || got.Height != want.Height {
		add("Width×Height", [2]int{got.Width, got.Height}, [2]int{want.Width, want.Height})
	}
	if got.BlobKey != want.BlobKey {
		add("BlobKey", got.BlobKey, want.BlobKey)
	}
	if msg := diffJSON(got.AIMetadata, want.AIMetadata); msg != "" {
		d = append(d, "AIMetadata: "+msg)
	}
	switch {
	case (got.Error == nil) != (want.Error == nil):
		add("Error", got.Error, want.Error)
	case got.Error != nil && *got.Error != *want.Error:
		add("Error", *got.Error, *want.Error)
	}
	if got.Attempts != want.Attempts {
		add("Attempts", got.Attempts, want.Attempts)
	}
	if msg := diffTime(got.CreatedAt, want.CreatedAt); msg != "" {
		d = append(d, "CreatedAt: "+msg)
	}
	if msg := diffTime(got.UpdatedAt, want.UpdatedAt); msg != "" {
		d = append(d, "UpdatedAt: "+msg)
	}
	for _, f := range []struct {
		name      string
		got, want *time.Time
	}{
		{"ReceivedAt", got.ReceivedAt, want.ReceivedAt},
		{"EnqueuedAt", got.EnqueuedAt, want.EnqueuedAt},
		{"StartedAt", got.StartedAt, want.StartedAt},
		{"AnalyzedAt", got.AnalyzedAt, want.AnalyzedAt},
		{"ProcessedAt", got.ProcessedAt, want.ProcessedAt},
		{"EventSentAt", got.EventSentAt, want.EventSentAt},
	} {
		if msg := diffOptTime(f.got, f.want); msg != "" {
			d = append(d, f.name+": "+msg)
		}
	}
	if got.EventID != want.EventID {
		add("EventID", got.EventID, want.EventID)
	}
	if got.EventPending != want.EventPending {
		add("EventPending", got.EventPending, want.EventPending)
	}
	return d
}

// diffOptTime compares optional times, nil distinct from any time.
func diffOptTime(got, want *time.Time) string {
	switch {
	case got == nil && want == nil:
		return ""
	case got == nil:
		return fmt.Sprintf("nil, want %s", want.UTC().Truncate(time.Millisecond).Format(time.RFC3339Nano))
	case want == nil:
		return fmt.Sprintf("%s, want nil", got.Format(time.RFC3339Nano))
	}
	return diffTime(*got, *want)
}

func diffTime(got, want time.Time) string {
	if got.Location() != time.UTC {
		return fmt.Sprintf("%s is not in UTC", got)
	}
	if got.UnixMilli() != want.UnixMilli() {
		return fmt.Sprintf("%s, want %s (millisecond precision)",
			got.Format(time.RFC3339Nano), want.UTC().Truncate(time.Millisecond).Format(time.RFC3339Nano))
	}
	return ""
}

func diffJSON(got, want json.RawMessage) string {
	if (got == nil) != (want == nil) {
		return fmt.Sprintf("%q (nil: %t), want %q (nil: %t)", got, got == nil, want, want == nil)
	}
	if got == nil {
		return ""
	}
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		return fmt.Sprintf("%q is not JSON: %v", got, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		return fmt.Sprintf("want %q is not JSON: %v", want, err)
	}
	if !reflect.DeepEqual(g, w) {
		return fmt.Sprintf("%s, want %s", got, want)
	}
	return ""
}

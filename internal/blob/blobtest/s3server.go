package blobtest

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// S3Handler is a real S3-protocol server — gofakes3 v1.2.0 on its in-memory
// backend — holding the named empty buckets. It checks no credentials and
// verifies no checksums other than Content-MD5 (see the scale-out test
// servers note); requests must be path-style.
func S3Handler(buckets ...string) (http.Handler, error) {
	backend := s3mem.New()
	for _, b := range buckets {
		if err := backend.CreateBucket(b); err != nil {
			return nil, err
		}
	}
	return gofakes3.New(backend).Server(), nil
}

// S3Server serves S3Handler on loopback until t ends and returns its base
// URL, the endpoint of an s3:// BLOB_URL (any credentials do).
func S3Server(t testing.TB, buckets ...string) string {
	t.Helper()
	h, err := S3Handler(buckets...)
	if err != nil {
		t.Fatalf("fake S3 server: %v", err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

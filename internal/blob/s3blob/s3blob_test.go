package s3blob

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/oklog/ulid/v2"

	"github.com/klectr/klectr/internal/blob"
	"github.com/klectr/klectr/internal/blob/blobtest"
)

const bucket = "klectr-test"

func fakeS3(t *testing.T) string { return blobtest.S3Server(t, bucket) }

func newStore(t *testing.T, endpoint, prefix string) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := New(ctx, Config{
		Bucket: bucket, Prefix: prefix, Endpoint: endpoint,
		// gofakes3 checks no signature; the chain must not go looking.
		AccessKeyID: "test", SecretAccessKey: "test",
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

// TestStore runs the conformance suite with every subtest in a prefix of its
// own on one server, so Walk must also keep to its prefix.
func TestStore(t *testing.T) {
	endpoint := fakeS3(t)
	blobtest.TestStore(t, func(t *testing.T) blob.Store {
		return newStore(t, endpoint, "t/"+ulid.Make().String()+"/")
	})
}

func TestStoreWithoutPrefix(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t, fakeS3(t), "")
	key, err := s.Put(ctx, strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	if err := s.Walk(ctx, time.Now().Add(time.Hour), func(k string) error { keys = append(keys, k); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != key {
		t.Fatalf("Walk = %v, want [%s]", keys, key)
	}
	if _, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}); err != nil {
		t.Fatalf("object %s not at the bucket's root: %v", key, err)
	}
}

// TestRemoveTempAbortsInterruptedUploads: a multipart upload begun and never
// finished (a process killed mid-Put) is aborted by RemoveTemp once older
// than the cutoff, and so by Sweep.
func TestRemoveTempAbortsInterruptedUploads(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t, fakeS3(t), "p/")
	other := newStore(t, fakeS3(t), "")
	start := func(s *Store) {
		t.Helper()
		key := blob.NewKey()
		up, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String(bucket), Key: s.name(key)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.client.UploadPart(ctx, &s3.UploadPartInput{
			Bucket: aws.String(bucket), Key: s.name(key), UploadId: up.UploadId,
			PartNumber: aws.Int32(1), Body: bytes.NewReader(make([]byte, partSize)),
		}); err != nil {
			t.Fatal(err)
		}
	}
	start(s)
	start(other)
	if n, err := s.RemoveTemp(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("RemoveTemp before the upload began = %d, %v; want 0", n, err)
	}
	none := func(context.Context, []string) (map[string]bool, error) { return nil, nil }
	if n, err := blob.Sweep(ctx, s, time.Now().Add(time.Hour), none); err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want the 1 interrupted upload aborted", n, err)
	}
	if n := uploads(t, s); n != 0 {
		t.Fatalf("%d multipart uploads left", n)
	}
	if n := uploads(t, other); n != 1 {
		t.Fatalf("the other store's upload was touched: %d left, want 1", n)
	}
}

func uploads(t *testing.T, s *Store) int {
	t.Helper()
	out, err := s.client.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	return len(out.Uploads)
}

func TestNewFailsFast(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	ctx := context.Background()
	start := time.Now()
	if _, err := New(ctx, Config{Bucket: bucket, Endpoint: dead, AccessKeyID: "a", SecretAccessKey: "b"}); err == nil {
		t.Error("New succeeded without a server")
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("New took %v to fail", d)
	}
	if _, err := New(ctx, Config{Bucket: "no-such-bucket", Endpoint: fakeS3(t), AccessKeyID: "a", SecretAccessKey: "b"}); err == nil {
		t.Error("New succeeded on a missing bucket")
	}
}

func TestParseURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		raw  string
		want Config
	}{
		{"s3://bucket", Config{Bucket: "bucket"}},
		{"s3://my.bucket-1/", Config{Bucket: "my.bucket-1"}},
		{"s3://bucket/blobs", Config{Bucket: "bucket", Prefix: "blobs/"}},
		{"s3://bucket/a/b/?region=eu-west-3", Config{Bucket: "bucket", Prefix: "a/b/", Region: "eu-west-3"}},
		{"s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1",
			Config{Bucket: "bucket", Prefix: "prefix/", Endpoint: "http://127.0.0.1:9000", Region: "us-east-1"}},
		{"s3://bucket?endpoint=https%3A%2F%2Fs3.example.com%2Fbase", Config{Bucket: "bucket", Endpoint: "https://s3.example.com/base"}},
	} {
		got, err := ParseURL(tc.raw)
		if err != nil || got != tc.want {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", tc.raw, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ raw, mention string }{
		{"file:///data", "s3://"},
		{"s3:bucket", "bucket"},
		{"s3://", "bucket"},
		{"s3://Bucket", "bucket"},
		{"s3://b", "bucket"},
		{"s3://bucket_x", "bucket"},
		{"s3://key:secret@bucket", "AWS_ACCESS_KEY_ID"},
		{"s3://bucket/a/../b", ".."},
		{"s3://bucket/a//b", "segment"},
		{"s3://bucket?endpoint=ftp://host", "endpoint"},
		{"s3://bucket?endpoint=127.0.0.1:9000", "endpoint"},
		{"s3://bucket?endpoint=http://u:p@host", "endpoint"},
		{"s3://bucket?region=", "region"},
		{"s3://bucket?region=a&region=b", "region"},
		{"s3://bucket?endpiont=http://host", "unknown parameter \"endpiont\""},
		{"s3://bucket#x", "fragment"},
		{"s3://bucket?%zz", "invalid"},
	} {
		if _, err := ParseURL(tc.raw); err == nil || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("ParseURL(%q) = %v; want an error mentioning %q", tc.raw, err, tc.mention)
		}
	}
}

// serverEnv makes the test binary serve blobtest.S3Handler on loopback and print
// its URL, so TestPutMemory measures a heap the server does not share.
const serverEnv = "KLECTR_S3BLOB_FAKE_SERVER"

func TestMain(m *testing.M) {
	if os.Getenv(serverEnv) != "" {
		h, err := blobtest.S3Handler(bucket)
		if err != nil {
			panic(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		fmt.Printf("http://%s\n", l.Addr())
		panic(http.Serve(l, h))
	}
	os.Exit(m.Run())
}

// TestPutMemory: an upload far larger than the part size holds no more than
// the part buffers. Not parallel: it measures this process's heap.
func TestPutMemory(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), serverEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(s)
		io.Copy(io.Discard, out)
	}()
	var endpoint string
	select {
	case endpoint = <-line:
	case <-time.After(20 * time.Second):
		t.Fatal("the fake S3 server did not start within 20 s")
	}
	s := newStore(t, endpoint, "")
	// Three 5 MiB part buffers, the SDK's request state and garbage the GC
	// has not yet collected: loose, but far below the 64 MiB a whole-file
	// buffer would take.
	const bound = 28 << 20
	for _, size := range []int64{10 << 20, 64 << 20} {
		blobtest.TestPutMemory(t, s, size, bound)
	}
}

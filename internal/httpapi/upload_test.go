package httpapi_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"golang.org/x/image/webp"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/httpapi"
	"github.com/klectr/klectr/internal/wire"
)

// jobSchema is api/ai-job.schema.json, compiled once per test binary.
var jobSchema = sync.OnceValues(func() (*jsonschema.Schema, error) {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	return c.Compile("../../api/ai-job.schema.json")
})

// upFile is a file a test uploads and what the API must make of it.
type upFile struct {
	name          string // as the client sends it
	data          []byte
	wantFilename  string // cleaned
	wantType      string
	width, height int
}

// expect reads what a fixture must be taken for, independently of
// imageinfo: the type from the fixture's name (the fixtures README), the
// dimensions from the standard decoders (HEIC: the README's 150x103).
func expect(t *testing.T, rel string) upFile {
	t.Helper()
	data := fixture(t, rel)
	f := upFile{name: filepath.Base(rel), data: data, wantFilename: filepath.Base(rel)}
	var cfg image.Config
	var err error
	switch filepath.Ext(rel) {
	case ".jpeg", ".jpg":
		f.wantType = "image/jpeg"
		cfg, err = jpeg.DecodeConfig(bytes.NewReader(data))
	case ".png":
		f.wantType = "image/png"
		cfg, err = png.DecodeConfig(bytes.NewReader(data))
	case ".webp":
		f.wantType = "image/webp"
		cfg, err = webp.DecodeConfig(bytes.NewReader(data))
	case ".heic":
		f.wantType = "image/heic"
		cfg = image.Config{Width: 150, Height: 103}
	default:
		t.Fatalf("no expectation for fixture %s", rel)
	}
	if err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	f.width, f.height = cfg.Width, cfg.Height
	return f
}

func validFixtures(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("../../testdata/images/valid")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, "valid/"+e.Name())
	}
	if len(names) < 10 {
		t.Fatalf("only %d valid fixtures", len(names))
	}
	return names
}

// acceptedBody is the 202's body, decoded strictly.
type acceptedBody struct {
	Assets []struct {
		AssetID  string `json:"assetId"`
		JobID    string `json:"jobId"`
		Status   string `json:"status"`
		Filename string `json:"filename"`
	} `json:"assets"`
}

// checkAccepted checks a 202 for files uploaded by user: the reply, what
// Intake received (the assets, from which the intake's job payload is valid
// against ai-job.schema.json) and the blobs on disk.
func checkAccepted(t *testing.T, e *env, user string, files []upFile, r reply) {
	t.Helper()
	if r.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d, want 202; body %s", r.StatusCode, r.Body)
	}
	var body acceptedBody
	dec := json.NewDecoder(bytes.NewReader(r.Body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		t.Fatalf("202 body %s: %v", r.Body, err)
	}
	if len(body.Assets) != len(files) {
		t.Fatalf("%d assets in the reply, want %d", len(body.Assets), len(files))
	}
	subs := e.intake.submitted()
	if len(subs) != 1 {
		t.Fatalf("Intake.Submit called %d times, want once", len(subs))
	}
	sub := subs[0]
	if len(sub.Assets) != len(files) {
		t.Fatalf("Submit got %d assets, want %d", len(sub.Assets), len(files))
	}
	schema, err := jobSchema()
	if err != nil {
		t.Fatal(err)
	}
	wantTime := e.now.Truncate(time.Millisecond)
	keys := map[string]bool{}
	for i, f := range files {
		a, got := sub.Assets[i], body.Assets[i]
		sum := sha256.Sum256(f.data)
		wantSum := hex.EncodeToString(sum[:])

		if got.AssetID != a.ID || got.JobID != a.ProcessingJobID || got.Status != "processing" || got.Filename != f.wantFilename {
			t.Errorf("file %d: reply %+v, want asset %s job %s processing %q", i, got, a.ID, a.ProcessingJobID, f.wantFilename)
		}
		if a.UserID != user || a.Status != asset.StatusProcessing || a.Filename != f.wantFilename ||
			a.ContentType != f.wantType || a.Size != int64(len(f.data)) || a.SHA256 != wantSum ||
			a.Width != f.width || a.Height != f.height || a.Attempts != 0 || a.AIMetadata != nil ||
			a.Error != nil || a.ProcessedAt != nil || !a.CreatedAt.Equal(wantTime) || !a.UpdatedAt.Equal(wantTime) {
			t.Errorf("file %d (%s): asset\n  %+v\nwant user %s type %s size %d sha %s %dx%d filename %q at %v",
				i, f.name, *a, user, f.wantType, len(f.data), wantSum, f.width, f.height, f.wantFilename, wantTime)
		}
		if a.ProcessingJobID == "" || a.ID == "" || a.ID == a.ProcessingJobID {
			t.Errorf("file %d: ids %q/%q", i, a.ID, a.ProcessingJobID)
		}
		job, err := wire.NewJob(context.Background(), a, e.now)
		if err != nil {
			t.Fatalf("file %d: %v", i, err)
		}
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(job.Payload))
		if err != nil {
			t.Fatalf("file %d: payload %s: %v", i, job.Payload, err)
		}
		if err := schema.Validate(inst); err != nil {
			t.Errorf("file %d: the job of asset %+v breaks ai-job.schema.json: %v", i, *a, err)
		}

		keys[a.BlobKey] = true
		rc, err := e.blobs.Open(context.Background(), a.BlobKey)
		if err != nil {
			t.Fatalf("file %d: blob %s: %v", i, a.BlobKey, err)
		}
		stored, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(stored, f.data) {
			t.Errorf("file %d: the blob holds %d bytes that differ from the %d uploaded", i, len(stored), len(f.data))
		}
	}
	if len(keys) != len(files) {
		t.Errorf("%d distinct blob keys for %d files", len(keys), len(files))
	}
	// Nothing but the accepted blobs: no temporary file left behind.
	if got := e.blobFiles(t); len(got) != len(files) {
		t.Errorf("blob directory holds %v, want exactly the %d accepted blobs", got, len(files))
	}
}

func TestUploadEachValidFixture(t *testing.T) {
	t.Parallel()
	for _, rel := range validFixtures(t) {
		t.Run(filepath.Base(rel), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			f := expect(t, rel)
			// The client's Content-Type says nothing true; it must not matter.
			body := multipartBody(t, false, part{field: "images", filename: f.name, contentType: "text/plain", data: f.data})
			r := e.upload(t, e.token(t, "u1", ""), body)
			checkAccepted(t, e, "u1", []upFile{f}, r)
		})
	}
}

func TestUploadSeveralFilesInOneRequest(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var files []upFile
	var parts []part
	lies := []string{"image/png", "", "text/plain", "image/jpeg", "application/pdf"}
	for i, rel := range []string{
		"valid/go-turns-two-280x360.jpeg", "valid/video-001.png", "valid/video-001.lossy.webp",
		"valid/video-001.heic", "valid/basn0g01.png",
	} {
		f := expect(t, rel)
		files = append(files, f)
		parts = append(parts, part{field: "images", filename: f.name, contentType: lies[i], data: f.data})
		if i == 1 {
			// Text fields are ignored and do not count as files.
			parts = append(parts, part{field: "note", data: []byte("hello")})
		}
	}
	r := e.upload(t, e.token(t, "user-7", ""), multipartBody(t, false, parts...))
	checkAccepted(t, e, "user-7", files, r)
	if !strings.Contains(e.logs.String(), "asset accepted") {
		t.Errorf("no log line for the accepted assets")
	}
}

// TestUploadIsDecidedByBytes: the client's file name and Content-Type are
// not trusted; the name is kept, cleaned, as data only.
func TestUploadIsDecidedByBytes(t *testing.T) {
	t.Parallel()
	jpg := expect(t, "valid/go-turns-two-280x360.jpeg")
	pngf := expect(t, "valid/video-001.png")
	cases := []struct {
		name, clientName, clientType string
		file                         upFile
		wantFilename                 string
	}{
		{"jpeg sent as text/plain", "card.jpg", "text/plain", jpg, "card.jpg"},
		{"jpeg sent as image/png with a png name", "card.png", "image/png", jpg, "card.png"},
		{"png sent as image/jpeg with a jpeg name", "card.jpeg", "image/jpeg", pngf, "card.jpeg"},
		{"no content type", "card", "", jpg, "card"},
		{"path traversal", "../../etc/passwd", "image/jpeg", jpg, "passwd"},
		{"windows path", `C:\x\y.jpg`, "image/jpeg", jpg, "y.jpg"},
		{"invalid utf-8", "caf\xe9.jpg", "image/jpeg", jpg, "caf.jpg"},
		{"1000 ascii bytes", strings.Repeat("a", 996) + ".jpg", "image/jpeg", jpg, strings.Repeat("a", 255)},
		{"1000 bytes of two-byte runes", strings.Repeat("é", 500), "image/jpeg", jpg, strings.Repeat("é", 127)},
		{"dot dot", "..", "image/jpeg", jpg, ""},
		{"spaces around", "  card.jpg  ", "image/jpeg", jpg, "card.jpg"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			f := c.file
			f.name, f.wantFilename = c.clientName, c.wantFilename
			body := multipartBody(t, false, part{field: "images", filename: c.clientName, contentType: c.clientType, data: f.data})
			r := e.upload(t, e.token(t, "u1", ""), body)
			checkAccepted(t, e, "u1", []upFile{f}, r)
		})
	}

	// Control characters cannot appear raw in a MIME header (Go's parser
	// refuses the line: bad_request, nothing kept), but RFC 2231 encoding
	// (filename*=) smuggles them in; they must not survive into the name.
	encoded := []struct{ name, disposition, want string }{
		{"nul byte", `form-data; name="images"; filename*=UTF-8''a%00b.jpg`, "ab.jpg"},
		{"escape sequence", `form-data; name="images"; filename*=UTF-8''%1B%5B31mred.jpg`, "[31mred.jpg"},
		{"newline", `form-data; name="images"; filename*=UTF-8''a%0D%0Ab.jpg`, "ab.jpg"},
		{"encoded traversal", `form-data; name="images"; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd`, "passwd"},
		{"encoded backslashes", `form-data; name="images"; filename*=UTF-8''C%3A%5Cx%5Cy.jpg`, "y.jpg"},
		{"invalid utf-8", `form-data; name="images"; filename*=UTF-8''caf%E9.jpg`, "caf.jpg"},
		{"high byte as us-ascii", `form-data; name="images"; filename*=us-ascii''caf%E9%FF.jpg`, "caf.jpg"},
		{"utf-8-encoded surrogate", `form-data; name="images"; filename*=UTF-8''a%ED%A0%80b.jpg`, "ab.jpg"},
		{"line and paragraph separators", `form-data; name="images"; filename*=UTF-8''a%E2%80%A8b%E2%80%A9c.jpg`, "abc.jpg"},
		{"bidi override", `form-data; name="images"; filename*=UTF-8''photo%E2%80%AEgpj.exe`, "photogpj.exe"},
	}
	for _, c := range encoded {
		t.Run("rfc 2231 "+c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			f := jpg
			f.name, f.wantFilename = c.disposition, c.want
			body := multipartBody(t, false, part{disposition: c.disposition, contentType: "image/jpeg", data: f.data})
			checkAccepted(t, e, "u1", []upFile{f}, e.upload(t, e.token(t, "u1", ""), body))
		})
	}
	for _, raw := range []string{"a\x00b.jpg", "\x1b[31mred.jpg"} {
		t.Run("raw control character "+strconv.Quote(raw), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			body := multipartBody(t, false, part{field: "images", filename: raw, contentType: "image/jpeg", data: jpg.data})
			e.upload(t, e.token(t, "u1", ""), body).wantError(t, 400, "bad_request")
			e.wantNothingKept(t)
		})
	}
}

// refusal is one upload that must be refused, with the error it must get.
type refusal struct {
	name        string
	limits      *httpapi.Limits // nil: the defaults
	contentType string          // "": multipart with testBoundary
	body        func(t *testing.T) []byte
	status      int
	code        string
	index       int      // -1: no file is at fault
	msg         []string // substrings of the message
}

func files(t *testing.T, rels ...string) []part {
	t.Helper()
	var ps []part
	for _, rel := range rels {
		ps = append(ps, filePart(filepath.Base(rel), fixture(t, rel)))
	}
	return ps
}

func limits(f func(*httpapi.Limits)) *httpapi.Limits {
	l := defaultLimits()
	f(&l)
	return &l
}

func (c refusal) run(t *testing.T) {
	t.Helper()
	var opts []envOption
	if c.limits != nil {
		opts = append(opts, withLimits(*c.limits))
	}
	e := newEnv(t, opts...)
	req := e.request(t, http.MethodPost, "/api/assets/analyze-queue", e.token(t, "u1", ""), bytes.NewReader(c.body(t)))
	ct := c.contentType
	if ct == "" {
		ct = multipartType
	} else if ct == "none" {
		ct = ""
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	r := e.do(t, req)
	if c.index >= 0 {
		r.wantFileError(t, c.status, c.code, c.index, c.msg...)
	} else {
		b := r.wantError(t, c.status, c.code)
		if b.Error.Index != nil {
			t.Errorf("index %d where no single file is at fault", *b.Error.Index)
		}
		for _, p := range c.msg {
			if !strings.Contains(b.Error.Message, p) {
				t.Errorf("message %q does not contain %q", b.Error.Message, p)
			}
		}
	}
	e.wantNothingKept(t)
	if n := e.intake.calls(); n > 0 {
		t.Errorf("Intake called %d times for a refused request", n)
	}
}

// TestUploadRefusals covers the upload rows of DESIGN §2's error table.
// Every refusal leaves nothing behind.
func TestUploadRefusals(t *testing.T) {
	t.Parallel()
	jpeg := "valid/go-turns-two-280x360.jpeg"
	cases := []refusal{
		{name: "empty multipart", status: 400, code: "no_files", index: -1,
			body: func(t *testing.T) []byte { return multipartBody(t, false) }},
		{name: "only text fields", status: 400, code: "no_files", index: -1, msg: []string{`"images"`},
			body: func(t *testing.T) []byte {
				return multipartBody(t, false, part{field: "note", data: []byte("hi")}, part{field: "other", data: []byte("x")})
			}},
		{name: "too many files", limits: limits(func(l *httpapi.Limits) { l.MaxFiles = 2 }),
			status: 400, code: "too_many_files", index: 2, msg: []string{"the limit is 2"},
			body: func(t *testing.T) []byte { return multipartBody(t, false, files(t, jpeg, jpeg, jpeg)...) }},
		{name: "not multipart", contentType: "text/plain", status: 400, code: "bad_request", index: -1,
			body: func(t *testing.T) []byte { return []byte("hello") }},
		{name: "json body", contentType: "application/json", status: 400, code: "bad_request", index: -1,
			body: func(t *testing.T) []byte { return []byte(`{"images":["aGVsbG8="]}`) }},
		{name: "no content type", contentType: "none", status: 400, code: "bad_request", index: -1,
			body: func(t *testing.T) []byte { return multipartBody(t, false, files(t, jpeg)...) }},
		{name: "missing boundary", contentType: "multipart/form-data", status: 400, code: "bad_request", index: -1,
			body: func(t *testing.T) []byte { return multipartBody(t, false, files(t, jpeg)...) }},
		{name: "wrong boundary", contentType: "multipart/form-data; boundary=other", status: 400, code: "bad_request", index: -1,
			body: func(t *testing.T) []byte { return multipartBody(t, false, files(t, jpeg)...) }},
		{name: "file in an unknown field", status: 400, code: "bad_request", index: -1, msg: []string{`"image"`},
			body: func(t *testing.T) []byte {
				p := filePart("a.jpg", fixture(t, jpeg))
				p.field = "image"
				return multipartBody(t, false, p)
			}},
		{name: "file in an unknown field after a good one", status: 400, code: "bad_request", index: -1,
			body: func(t *testing.T) []byte {
				p := filePart("a.jpg", fixture(t, jpeg))
				p.field = "photo"
				return multipartBody(t, false, filePart("b.jpg", fixture(t, jpeg)), p)
			}},
		{name: "truncated in a file, no closing boundary", status: 400, code: "bad_request", index: -1,
			body: func(t *testing.T) []byte {
				b := multipartBody(t, true, files(t, jpeg)...)
				return b[:len(b)-1000]
			}},
		{name: "one file, no closing boundary", status: 400, code: "bad_request", index: -1,
			body: func(t *testing.T) []byte { return multipartBody(t, true, files(t, jpeg)...) }},
		{name: "cut after a delimiter line", status: 400, code: "bad_request", index: -1,
			body: func(t *testing.T) []byte {
				return append(multipartBody(t, true, files(t, jpeg)...), "\r\n--"+testBoundary+"\r\n"...)
			}},
		{name: "cut after a delimiter", status: 400, code: "bad_request", index: -1,
			body: func(t *testing.T) []byte {
				return append(multipartBody(t, true, files(t, jpeg)...), "\r\n--"+testBoundary...)
			}},
		{name: "file part whose Content-Disposition does not parse", status: 400, code: "bad_request", index: -1,
			body: func(t *testing.T) []byte {
				// "[" may not appear unencoded in an RFC 2231 value: the
				// header does not parse, and the part has no form name.
				bad := filePart("", fixture(t, "valid/basn0g01.png"))
				bad.disposition = `form-data; name="images"; filename*=UTF-8''[1].png`
				return multipartBody(t, false, files(t, jpeg)[0], bad)
			}},
		{name: "part without Content-Disposition", status: 400, code: "bad_request", index: -1,
			body: func(t *testing.T) []byte {
				return []byte("--" + testBoundary + "\r\nContent-Type: image/png\r\n\r\n" + string(fixture(t, "valid/basn0g01.png")) +
					"\r\n--" + testBoundary + "--\r\n")
			}},
		{name: "cut in the headers of a second part", status: 400, code: "bad_request", index: -1,
			body: func(t *testing.T) []byte {
				return append(multipartBody(t, true, files(t, jpeg)...), "\r\n--"+testBoundary+"\r\nContent-Disposition: form-da"...)
			}},
		{name: "text field too long", status: 400, code: "bad_request", index: -1,
			body: func(t *testing.T) []byte {
				return multipartBody(t, false, part{field: "note", data: bytes.Repeat([]byte("x"), 65<<10)})
			}},
		{name: "file too large", limits: limits(func(l *httpapi.Limits) { l.MaxFileBytes = 8 << 10 }),
			status: 413, code: "file_too_large", index: 1, msg: []string{"image 1", "8 KiB"},
			body: func(t *testing.T) []byte {
				return multipartBody(t, false, files(t, "valid/basn0g01.png", jpeg, "valid/basn3p08.png")...)
			}},
		{name: "file one byte over the limit", limits: limits(func(l *httpapi.Limits) { l.MaxFileBytes = 36888 - 1 }),
			status: 413, code: "file_too_large", index: 0, msg: []string{"image 0", "36.0 KiB"},
			body: func(t *testing.T) []byte { return multipartBody(t, false, files(t, jpeg)...) }},
		{name: "not an image, sent as image/jpeg", status: 415, code: "unsupported_media_type", index: 0, msg: []string{"image 0"},
			body: func(t *testing.T) []byte {
				p := filePart("not-an-image.jpg", fixture(t, "invalid/not-an-image.jpg"))
				p.contentType = "image/jpeg"
				return multipartBody(t, false, p)
			}},
		{name: "empty file", status: 415, code: "unsupported_media_type", index: 0,
			body: func(t *testing.T) []byte { return multipartBody(t, false, filePart("empty.jpg", nil)) }},
		{name: "invalid crc32", status: 422, code: "invalid_image", index: 0, msg: []string{"image 0"},
			body: func(t *testing.T) []byte { return multipartBody(t, false, files(t, "invalid/invalid-crc32.png")...) }},
		{name: "bomb over MAX_PIXELS", status: 422, code: "invalid_image", index: 1,
			msg: []string{"image 1", "30000x30000", "the limit is 50.0 megapixels"},
			body: func(t *testing.T) []byte {
				return multipartBody(t, false, files(t, "valid/basn0g01.png", "invalid/bomb-30000x30000.png")...)
			}},
		{name: "a valid image over a small MAX_PIXELS", limits: limits(func(l *httpapi.Limits) { l.MaxPixels = 100_000 }),
			status: 422, code: "invalid_image", index: 0, msg: []string{"280x360", "0.1 megapixels"},
			body: func(t *testing.T) []byte { return multipartBody(t, false, files(t, jpeg)...) }},
	}
	entries, err := os.ReadDir("../../testdata/images/unsupported")
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		rel := "unsupported/" + en.Name()
		cases = append(cases, refusal{name: "unsupported " + en.Name(), status: 415, code: "unsupported_media_type", index: 0,
			msg: []string{"image 0"},
			body: func(t *testing.T) []byte {
				p := filePart("photo.jpg", fixture(t, rel))
				p.contentType = "image/jpeg"
				return multipartBody(t, false, p)
			}})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t)
		})
	}
}

// TestUploadRefusedThirdFileLeavesNothing: when the 3rd file of a request is
// refused, the two accepted before it are removed too and nothing reaches
// the intake.
func TestUploadRefusedThirdFileLeavesNothing(t *testing.T) {
	t.Parallel()
	good := []string{"valid/basn0g01.png", "valid/video-001.lossy.webp"}
	third := func(rel string) func(t *testing.T) []byte {
		return func(t *testing.T) []byte { return multipartBody(t, false, files(t, append(good, rel)...)...) }
	}
	img2 := []string{"image 2"}
	cases := []refusal{
		{name: "unsupported", status: 415, code: "unsupported_media_type", msg: img2, body: third("unsupported/triangle-001.gif")},
		{name: "not an image", status: 415, code: "unsupported_media_type", msg: img2, body: third("invalid/not-an-image.jpg")},
		{name: "too large", limits: limits(func(l *httpapi.Limits) { l.MaxFileBytes = 16 << 10 }),
			status: 413, code: "file_too_large", msg: []string{"image 2", "16 KiB"}, body: third("valid/go-turns-two-280x360.jpeg")},
		{name: "invalid", status: 422, code: "invalid_image", msg: img2, body: third("invalid/invalid-crc32.png")},
		{name: "bomb", status: 422, code: "invalid_image", msg: []string{"image 2", "50.0 megapixels"}, body: third("invalid/bomb-30000x30000.png")},
		{name: "too many", limits: limits(func(l *httpapi.Limits) { l.MaxFiles = 2 }),
			status: 400, code: "too_many_files", msg: []string{"the limit is 2"}, body: third("valid/video-001.png")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.index = 2
			c.run(t)
		})
	}
}

// TestUploadRequestOverTotal: a request larger than MAX_FILES ×
// MAX_FILE_BYTES (plus framing) is refused — from its Content-Length before
// a byte is read, or, without one, once the body passes the bound.
func TestUploadRequestOverTotal(t *testing.T) {
	t.Parallel()
	lim := defaultLimits()
	lim.MaxFiles, lim.MaxFileBytes = 2, 4<<10
	maxBody := int64(lim.MaxFiles)*lim.MaxFileBytes + 1<<20

	t.Run("content-length", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, withLimits(lim))
		body := &countReader{r: bytes.NewReader(multipartBody(t, false, files(t, "valid/basn0g01.png")...))}
		req := e.request(t, http.MethodPost, "/api/assets/analyze-queue", e.token(t, "u1", ""), body)
		req.Header.Set("Content-Type", multipartType)
		req.ContentLength = maxBody + 1 // a real client would then send that much
		r := e.serve(t, req)
		b := r.wantError(t, 413, "file_too_large")
		if b.Error.Index != nil || !strings.Contains(b.Error.Message, "4 KiB") || !strings.Contains(b.Error.Message, "2 files") {
			t.Errorf("message %q should name the limits (2 files of 4 KiB), without an index", b.Error.Message)
		}
		if body.n > 0 {
			t.Errorf("the handler read %d bytes of a body it had to refuse from its length", body.n)
		}
		e.wantNothingKept(t)
	})
	t.Run("streamed past the bound", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, withLimits(lim))
		var parts []part
		for range 20 { // 20 text fields of 60 KiB: each allowed, together over the bound
			parts = append(parts, part{field: "note", data: bytes.Repeat([]byte("x"), 60<<10)})
		}
		parts = append(parts, files(t, "valid/basn0g01.png")...)
		req := e.request(t, http.MethodPost, "/api/assets/analyze-queue", e.token(t, "u1", ""),
			io.MultiReader(bytes.NewReader(multipartBody(t, false, parts...)))) // no length: chunked
		req.Header.Set("Content-Type", multipartType)
		// In-process: a real client may see the connection closed while
		// it still writes the body it was told not to send.
		r := e.serve(t, req)
		r.wantError(t, 413, "file_too_large")
		if r.Header.Get("Connection") != "close" {
			t.Errorf("Connection %q: the rest of a refused body is not worth reading", r.Header.Get("Connection"))
		}
		e.wantNothingKept(t)
	})
}

type countReader struct {
	r io.Reader
	n int
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += n
	return n, err
}

func TestUploadRateLimited(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.limiter.set(func(f *fakeLimiter) { f.deny, f.wait = true, 1500*time.Millisecond })
	r := e.upload(t, e.token(t, "u9", ""), multipartBody(t, false, files(t, "valid/basn0g01.png")...))
	r.wantError(t, 429, "rate_limited")
	if got := r.Header.Get("Retry-After"); got != "2" {
		t.Errorf("Retry-After %q, want 2 (1.5 s rounded up)", got)
	}
	if u := e.limiter.asked(); len(u) != 1 || u[0] != "u9" {
		t.Errorf("limiter asked about %v, want [u9]", u)
	}
	e.wantNothingKept(t)

	e.limiter.set(func(f *fakeLimiter) { f.deny = false })
	e.upload(t, e.token(t, "u9", ""), multipartBody(t, false, files(t, "valid/basn0g01.png")...))
	if len(e.intake.submitted()) != 1 {
		t.Errorf("an allowed upload was not submitted")
	}
}

// TestUploadUnavailable: when the intake cannot make the work durable, the
// client gets 503 and the blobs already written are removed.
func TestUploadUnavailable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.intake.set(func(f *fakeIntake) { f.submitErr = errors.New("database is locked: secret-internal-detail") })
	r := e.upload(t, e.token(t, "u1", ""), multipartBody(t, false, files(t, "valid/basn0g01.png", "valid/video-001.png")...))
	b := r.wantError(t, 503, "unavailable")
	if strings.Contains(b.Error.Message, "secret-internal-detail") {
		t.Errorf("the 503 leaks the cause: %q", b.Error.Message)
	}
	if f := e.blobFiles(t); len(f) > 0 {
		t.Errorf("blobs left after a 503: %v", f)
	}
	if !strings.Contains(e.logs.String(), "secret-internal-detail") {
		t.Errorf("the cause of a 503 is not logged")
	}
}

// TestUploadBombCostsNothing: the 900-megapixel bomb is refused from its
// header. A full decode would allocate at least 900 MB; the handler must
// stay within a few MB. Not parallel: TotalAlloc is process-wide, and no
// parallel test runs while a sequential one does.
func TestUploadBombCostsNothing(t *testing.T) {
	e := newEnvUnstarted(t)
	body := multipartBody(t, false, files(t, "invalid/bomb-30000x30000.png")...)
	req := e.request(t, http.MethodPost, "/api/assets/analyze-queue", e.token(t, "u1", ""), bytes.NewReader(body))
	req.Header.Set("Content-Type", multipartType)
	rec := httptest.NewRecorder()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	e.handler.ServeHTTP(rec, req)
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)

	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("bomb (%d-byte body): %v, %d bytes allocated, %d mallocs", len(body), elapsed, alloc, after.Mallocs-before.Mallocs)
	res := rec.Result()
	r := reply{res, rec.Body.Bytes()}
	checkContract(t, req, res, r.Body, false)
	r.wantFileError(t, 422, "invalid_image", 0, "the limit is 50.0 megapixels")
	if alloc > 4<<20 {
		t.Errorf("refusing the bomb allocated %d bytes; a header read needs far less than 4 MiB", alloc)
	}
	e.wantNothingKept(t)
}

// TestUploadLimiterSeesTheTokenSubject: the limiter is asked only about
// authenticated users, with their token's subject.
func TestUploadLimiterSeesTheTokenSubject(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.upload(t, "", multipartBody(t, false, files(t, "valid/basn0g01.png")...)).wantError(t, 401, "unauthorized")
	if u := e.limiter.asked(); len(u) != 0 {
		t.Errorf("the limiter was asked about an unauthenticated request: %v", u)
	}
	e.upload(t, e.token(t, "subject-42", ""), multipartBody(t, false, files(t, "valid/basn0g01.png")...))
	if u := e.limiter.asked(); len(u) != 1 || u[0] != "subject-42" {
		t.Errorf("limiter asked about %v, want [subject-42]", u)
	}
}

// TestUploadLimitsAreInclusive: a file of exactly MAX_FILE_BYTES and an image
// of exactly MAX_PIXELS are accepted (the limits are "at most"); one more
// byte or pixel is refused, by the cases in TestUploadRefusals and here.
func TestUploadLimitsAreInclusive(t *testing.T) {
	t.Parallel()
	jpg := expect(t, "valid/go-turns-two-280x360.jpeg")
	size, pixels := int64(len(jpg.data)), int64(jpg.width*jpg.height)
	for _, tc := range []struct {
		name   string
		limits func(*httpapi.Limits)
	}{
		{"file of exactly MAX_FILE_BYTES", func(l *httpapi.Limits) { l.MaxFileBytes = size }},
		{"image of exactly MAX_PIXELS", func(l *httpapi.Limits) { l.MaxPixels = pixels }},
		{"both at once", func(l *httpapi.Limits) { l.MaxFileBytes, l.MaxPixels = size, pixels }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, withLimits(*limits(tc.limits)))
			body := multipartBody(t, false, part{field: "images", filename: jpg.name, contentType: "image/jpeg", data: jpg.data})
			checkAccepted(t, e, "u1", []upFile{jpg}, e.upload(t, e.token(t, "u1", ""), body))
		})
	}
	t.Run("one pixel over MAX_PIXELS", func(t *testing.T) {
		t.Parallel()
		c := refusal{limits: limits(func(l *httpapi.Limits) { l.MaxPixels = pixels - 1 }),
			status: 422, code: "invalid_image", index: 0, msg: []string{"280x360"},
			body: func(t *testing.T) []byte { return multipartBody(t, false, filePart("a.jpg", jpg.data)) }}
		c.run(t)
	})
}

// TestUploadPixelCapCoversEveryFormat: MAX_PIXELS is decided from the header
// for every accepted format, not only those a decoder later reads in full
// (nothing downstream decodes HEIC). The headers are real fixtures with
// their dimensions rewritten to a bomb's.
func TestUploadPixelCapCoversEveryFormat(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, fixture, size string
		patch               func(t *testing.T, b []byte)
	}{
		{"heic, ispe 30000x30000", "valid/video-001.heic", "30000x30000", func(t *testing.T, b []byte) {
			n := 0
			for i := bytes.Index(b, []byte("ispe")); i >= 0; {
				// ispe: version and flags, then width and height, big-endian.
				binary.BigEndian.PutUint32(b[i+8:], 30000)
				binary.BigEndian.PutUint32(b[i+12:], 30000)
				n++
				j := bytes.Index(b[i+4:], []byte("ispe"))
				if j < 0 {
					break
				}
				i += 4 + j
			}
			if n == 0 {
				t.Fatal("no ispe box in the fixture")
			}
		}},
		{"webp lossless, 16384x16384", "valid/tux.lossless.webp", "16384x16384", func(t *testing.T, b []byte) {
			if string(b[12:16]) != "VP8L" || b[20] != 0x2f {
				t.Fatal("the fixture is not a simple VP8L file")
			}
			// 14 bits of width-1, 14 of height-1, then alpha and version.
			v := binary.LittleEndian.Uint32(b[21:])
			binary.LittleEndian.PutUint32(b[21:], v&^(1<<28-1)|16383|16383<<14)
		}},
		{"webp lossy, one pixel over a small MAX_PIXELS", "valid/video-001.lossy.webp", "150x103", nil},
		{"heic, one pixel over a small MAX_PIXELS", "valid/video-001.heic", "150x103", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data := bytes.Clone(fixture(t, tc.fixture))
			lim := limits(func(*httpapi.Limits) {})
			if tc.patch != nil {
				tc.patch(t, data)
			} else {
				lim.MaxPixels = 150*103 - 1
			}
			c := refusal{limits: lim, status: 422, code: "invalid_image", index: 0, msg: []string{"image 0", tc.size},
				body: func(t *testing.T) []byte { return multipartBody(t, false, filePart("photo", data)) }}
			c.run(t)
		})
	}
}

// TestUploadErrorsDoNotEchoWhatTheClientSent: a message that quotes the
// client's text (a field name, a header line, the boundary) quotes a short,
// valid UTF-8 start of it; 100 KB sent used to come back as 500 KB of
// escapes.
func TestUploadErrorsDoNotEchoWhatTheClientSent(t *testing.T) {
	t.Parallel()
	jpg := fixture(t, "valid/go-turns-two-280x360.jpeg")
	junk := strings.Repeat("\xfe", 100_000)
	for _, tc := range []struct {
		name, contentType string
		body              []byte
		want              string
	}{
		{"file in a huge unknown field", multipartType,
			multipartBody(t, false, part{disposition: `form-data; name="` + junk + `"; filename="a.jpg"`, data: jpg}), "unknown file field"},
		{"huge text field name, too long a value", multipartType,
			multipartBody(t, false, part{disposition: `form-data; name="` + junk + `"`, data: bytes.Repeat([]byte("x"), 65<<10)}), "is longer than"},
		{"huge malformed header line", multipartType,
			[]byte("--" + testBoundary + "\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.jpg\"\r\n" + junk + "\r\n\r\nxx\r\n--" + testBoundary + "--\r\n"),
			"malformed"},
		{"long boundary, never closed", "multipart/form-data; boundary=" + strings.Repeat("b", 2000),
			[]byte("--" + strings.Repeat("b", 2000) + "\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--" + strings.Repeat("b", 2000) + "\r\n"),
			"closing boundary"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			req := e.request(t, http.MethodPost, "/api/assets/analyze-queue", e.token(t, "u1", ""), bytes.NewReader(tc.body))
			req.Header.Set("Content-Type", tc.contentType)
			r := e.do(t, req)
			b := r.wantError(t, 400, "bad_request")
			if len(r.Body) > 1024 || len(b.Error.Message) > 400 {
				t.Errorf("the reply is %d bytes for a request of %d: %s", len(r.Body), len(tc.body), r.Body)
			}
			if !strings.Contains(b.Error.Message, tc.want) {
				t.Errorf("message %q: want it to say %q", b.Error.Message, tc.want)
			}
			e.wantNothingKept(t)
		})
	}
}

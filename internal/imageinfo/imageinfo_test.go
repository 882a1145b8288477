package imageinfo

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

const fixtures = "../../testdata/images"

// fixtureCases is what every fixture file must produce. The sizes were taken
// from a full decode with Go's decoders (image.Decode, not DecodeConfig); the
// HEIC's from its primary item, read off the file's boxes (the grid is
// 150x103; its single tile, also in the file, is 150x104).
var fixtureCases = []struct {
	path    string
	want    Info
	wantErr error
}{
	{"valid/basn0g01.png", Info{PNG, "image/png", 32, 32}, nil},
	{"valid/basn3p08.png", Info{PNG, "image/png", 32, 32}, nil},
	{"valid/basn6a16.png", Info{PNG, "image/png", 32, 32}, nil},
	{"valid/video-001.png", Info{PNG, "image/png", 150, 103}, nil},
	{"valid/blue-purple-pink-large.lossless.webp", Info{WebP, "image/webp", 600, 400}, nil},
	{"valid/gopher-doc.with-alpha.lossless.webp", Info{WebP, "image/webp", 75, 100}, nil},
	{"valid/tux.lossless.webp", Info{WebP, "image/webp", 386, 395}, nil},
	{"valid/video-001.lossy.webp", Info{WebP, "image/webp", 150, 103}, nil},
	{"valid/go-turns-two-280x360.jpeg", Info{JPEG, "image/jpeg", 280, 360}, nil},
	{"valid/photo-4032x3024.jpeg", Info{JPEG, "image/jpeg", 4032, 3024}, nil},
	{"valid/video-001.cmyk.jpeg", Info{JPEG, "image/jpeg", 150, 103}, nil},
	{"valid/video-001.progressive.jpeg", Info{JPEG, "image/jpeg", 150, 103}, nil},
	{"valid/video-001.q50.420.jpeg", Info{JPEG, "image/jpeg", 150, 103}, nil},
	{"valid/video-001.restart2.jpeg", Info{JPEG, "image/jpeg", 150, 103}, nil},
	{"valid/video-005.gray.jpeg", Info{JPEG, "image/jpeg", 150, 103}, nil},
	{"valid/video-001.heic", Info{HEIC, "image/heic", 150, 103}, nil},

	// The header is all Inspect reads: the bomb's size is the caller's to refuse,
	// and broken pixel data behind a sound header is the worker's to find.
	{"invalid/bomb-30000x30000.png", Info{PNG, "image/png", 30000, 30000}, nil},
	{"invalid/invalid-noend.png", Info{PNG, "image/png", 232, 232}, nil},
	{"invalid/invalid-trunc.png", Info{PNG, "image/png", 232, 232}, nil},
	{"invalid/invalid-zlib.png", Info{PNG, "image/png", 232, 232}, nil},
	{"invalid/invalid-crc32.png", Info{}, ErrInvalid},
	{"invalid/not-an-image.jpg", Info{}, ErrUnsupported},

	{"unsupported/triangle-001.gif", Info{}, ErrUnsupported},
	{"unsupported/video-001.bmp", Info{}, ErrUnsupported},
	{"unsupported/video-001.tiff", Info{}, ErrUnsupported},
}

func readFixture(tb testing.TB, path string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(fixtures, filepath.FromSlash(path)))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// checkErr fails unless err wraps want and not the other sentinel.
func checkErr(t *testing.T, err, want error) {
	t.Helper()
	other := ErrInvalid
	if want == ErrInvalid {
		other = ErrUnsupported
	}
	if !errors.Is(err, want) || errors.Is(err, other) {
		t.Fatalf("err = %v, want it to wrap %q only", err, want)
	}
}

func TestInspectFixtures(t *testing.T) {
	t.Parallel()
	for _, tc := range fixtureCases {
		t.Run(tc.path, func(t *testing.T) {
			t.Parallel()
			data := readFixture(t, tc.path)
			// The result must not depend on how the reader splits its data.
			readers := map[string]io.Reader{
				"whole":    bytes.NewReader(data),
				"one-byte": iotest.OneByteReader(bytes.NewReader(data)),
				"half":     iotest.HalfReader(bytes.NewReader(data)),
			}
			for name, r := range readers {
				got, err := Inspect(r)
				if tc.wantErr != nil {
					checkErr(t, err, tc.wantErr)
					continue
				}
				if err != nil || got != tc.want {
					t.Fatalf("%s reader: Inspect = %+v, %v; want %+v", name, got, err, tc.want)
				}
			}
		})
	}
}

// TestFixtureTableComplete keeps the table above in step with the fixture
// directories, so that a fixture added later cannot go untested.
func TestFixtureTableComplete(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join(fixtures, "*", "*"))
	if err != nil {
		t.Fatal(err)
	}
	var onDisk, inTable []string
	for _, f := range files {
		rel, _ := filepath.Rel(fixtures, f)
		if filepath.Ext(f) != ".md" {
			onDisk = append(onDisk, filepath.ToSlash(rel))
		}
	}
	for _, tc := range fixtureCases {
		inTable = append(inTable, tc.path)
	}
	slices.Sort(onDisk)
	slices.Sort(inTable)
	if !slices.Equal(onDisk, inTable) {
		t.Fatalf("fixture files %v\ntable entries   %v", onDisk, inTable)
	}
}

// countingReader counts the bytes handed out, to show what Inspect consumed.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func TestInspectReadsHeaderOnly(t *testing.T) {
	t.Parallel()
	for _, path := range []string{
		"invalid/bomb-30000x30000.png",
		"valid/photo-4032x3024.jpeg",
		"valid/blue-purple-pink-large.lossless.webp",
		"valid/video-001.heic",
	} {
		data := readFixture(t, path)
		cr := &countingReader{r: bytes.NewReader(data)}
		if _, err := Inspect(cr); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		// One bufio buffer's worth (4 KiB) or two: the header, never the file.
		if cr.n > 8<<10 {
			t.Errorf("%s: Inspect read %d of %d bytes", path, cr.n, len(data))
		}
	}
}

// jpegWithAppSegments returns the fixture JPEG with n maximal APP15 segments
// (64 KiB each) inserted after SOI, before the SOF that holds the size.
func jpegWithAppSegments(t *testing.T, n int) []byte {
	t.Helper()
	src := readFixture(t, "valid/video-001.q50.420.jpeg")
	seg := append([]byte{0xFF, 0xEF, 0xFF, 0xFF}, make([]byte, 0xFFFF-2)...)
	out := append([]byte(nil), src[:2]...)
	for range n {
		out = append(out, seg...)
	}
	return append(out, src[2:]...)
}

func TestInspectJPEGBehindLargeAppSegments(t *testing.T) {
	t.Parallel()
	data := jpegWithAppSegments(t, 32) // 2 MiB of APP segments
	got, err := Inspect(bytes.NewReader(data))
	if want := (Info{JPEG, "image/jpeg", 150, 103}); err != nil || got != want {
		t.Fatalf("Inspect = %+v, %v; want %+v", got, err, want)
	}
}

func TestInspectStopsAtHeaderCap(t *testing.T) {
	t.Parallel()
	data := jpegWithAppSegments(t, 80) // 5 MiB of APP segments
	cr := &countingReader{r: bytes.NewReader(data)}
	_, err := Inspect(cr)
	checkErr(t, err, ErrInvalid)
	if !strings.Contains(err.Error(), "4 MiB") {
		t.Errorf("err = %q; want it to name the 4 MiB cap", err)
	}
	if cr.n > MaxHeaderBytes {
		t.Errorf("Inspect read %d bytes; the cap is %d", cr.n, MaxHeaderBytes)
	}
}

// A failing reader is not the client's fault: the error must carry the read
// error and neither sentinel, so that the caller answers 500, not 4xx.
func TestInspectReadError(t *testing.T) {
	t.Parallel()
	errDisk := errors.New("disk on fire")
	for _, path := range []string{
		"valid/video-001.q50.420.jpeg",
		"valid/video-001.png",
		"valid/video-001.lossy.webp",
		"valid/video-001.heic",
	} {
		data := readFixture(t, path)
		for _, k := range []int{0, 5, 20} { // all before the end of the size field
			r := io.MultiReader(bytes.NewReader(data[:k]), iotest.ErrReader(errDisk))
			_, err := Inspect(r)
			if !errors.Is(err, errDisk) || errors.Is(err, ErrInvalid) || errors.Is(err, ErrUnsupported) {
				t.Errorf("%s failing after %d bytes: err = %v; want the read error alone", path, k, err)
			}
		}
	}
}

// Every prefix of a file is either too short to identify (ErrUnsupported),
// a truncated header (ErrInvalid), or long enough to hold the whole header.
func TestInspectTruncated(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		path      string
		magic     int // bytes needed to identify the type
		headerEnd int // bytes needed to read the size
	}{
		{"valid/video-001.png", 8, 33},         // signature + IHDR
		{"valid/video-001.lossy.webp", 12, 30}, // RIFF header + VP8 chunk header + frame header
		{"valid/video-001.heic", 12, 0x1C8},    // ftyp + meta
	} {
		data := readFixture(t, tc.path)
		for k := 0; k <= tc.headerEnd; k++ {
			_, err := Inspect(bytes.NewReader(data[:k]))
			switch {
			case k < tc.magic:
				checkErr(t, err, ErrUnsupported)
			case k < tc.headerEnd:
				checkErr(t, err, ErrInvalid)
			case err != nil:
				t.Fatalf("%s cut to its %d header bytes: %v", tc.path, k, err)
			}
		}
	}
}

func TestInspectMessages(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		data string
		want string
	}{
		{"", "unsupported image type: the file is empty"},
		{"GIF89a\x01\x00\x01\x00", "unsupported image type: GIF"},
		{"II*\x00\x08\x00\x00\x00", "unsupported image type: TIFF"},
		{"hello, world", "unsupported image type: not a JPEG, PNG, WebP or HEIC/HEIF image"},
		{"\xFF\xD8\xFF", "invalid image: the JPEG header is truncated"},
		{"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", "invalid image: the PNG header is truncated"},
	} {
		_, err := Inspect(strings.NewReader(tc.data))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Inspect(%q) = %v; want an error starting %q", tc.data, err, tc.want)
		}
	}
}

func TestInspectZeroDimensions(t *testing.T) {
	t.Parallel()
	// A JPEG whose SOF says height 0 (to be given later by a DNL marker, which
	// Go does not support): Go's DecodeConfig reports 10x0 and no error.
	data := []byte{
		0xFF, 0xD8, // SOI
		0xFF, 0xC0, 0x00, 0x0B, 8, 0, 0, 0, 10, 1, 1, 0x11, 0, // SOF0: 8-bit, height 0, width 10, 1 component
		0xFF, 0xDA, 0x00, 0x02, // SOS
	}
	_, err := Inspect(bytes.NewReader(data))
	checkErr(t, err, ErrInvalid)
	if !strings.Contains(err.Error(), "10x0") {
		t.Errorf("err = %q; want it to give the size", err)
	}
}

func TestPixels(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		info Info
		want int64
	}{
		{Info{Width: 30000, Height: 30000}, 900_000_000},
		{Info{Width: math.MaxInt32, Height: math.MaxInt32}, (1<<31 - 1) * (1<<31 - 1)},
	} {
		if got := tc.info.Pixels(); got != tc.want {
			t.Errorf("%dx%d: Pixels() = %d; want %d", tc.info.Width, tc.info.Height, got, tc.want)
		}
	}
}

func BenchmarkInspect(b *testing.B) {
	for _, path := range []string{
		"valid/photo-4032x3024.jpeg",
		"invalid/bomb-30000x30000.png",
		"valid/video-001.heic",
	} {
		data := readFixture(b, path)
		b.Run(filepath.Base(path), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Inspect(bytes.NewReader(data)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func ExampleInspect() {
	f, err := os.Open(filepath.Join(fixtures, "valid", "video-001.heic"))
	if err != nil {
		panic(err)
	}
	defer f.Close()
	info, err := Inspect(f)
	fmt.Println(info.ContentType, info.Width, info.Height, info.Pixels(), err)
	// Output: image/heic 150 103 15450 <nil>
}

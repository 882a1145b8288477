package imageinfo

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"
	"testing/iotest"
)

// FuzzInspect checks, on any input: no panic; an error wraps exactly one of
// ErrUnsupported and ErrInvalid (the input is in memory, so there is no read
// error); success means a known format, its content type and a positive size;
// and the answer does not depend on how the reader splits the input.
func FuzzInspect(f *testing.F) {
	files, err := filepath.Glob(filepath.Join(fixtures, "*", "*"))
	if err != nil {
		f.Fatal(err)
	}
	for _, path := range files {
		if filepath.Ext(path) == ".md" {
			continue
		}
		rel, _ := filepath.Rel(fixtures, path)
		f.Add(readFixture(f, filepath.ToSlash(rel)))
	}
	for _, tc := range heifCases() {
		f.Add(tc.data)
	}
	f.Add([]byte{})
	f.Add([]byte{0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 8, 0, 0, 0, 10, 1, 1, 0x11, 0, 0xFF, 0xDA, 0x00, 0x02})
	f.Add([]byte("RIFF\x00\x00\x00\x00WEBPVP8X"))

	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := Inspect(bytes.NewReader(data))
		if err != nil {
			if errors.Is(err, ErrUnsupported) == errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v; want it to wrap exactly one of ErrUnsupported, ErrInvalid", err)
			}
			if info != (Info{}) {
				t.Fatalf("Inspect = %+v with err %v; want the zero Info", info, err)
			}
		} else {
			switch info.Format {
			case JPEG, PNG, WebP, HEIC, HEIF:
			default:
				t.Fatalf("Inspect = %+v; unknown format", info)
			}
			if info.ContentType != "image/"+string(info.Format) {
				t.Fatalf("Inspect = %+v; content type does not match the format", info)
			}
			if info.Width <= 0 || info.Height <= 0 || info.Pixels() <= 0 {
				t.Fatalf("Inspect = %+v; want a positive size", info)
			}
		}

		info2, err2 := Inspect(iotest.OneByteReader(bytes.NewReader(data)))
		if info2 != info || errors.Is(err2, ErrInvalid) != errors.Is(err, ErrInvalid) ||
			errors.Is(err2, ErrUnsupported) != errors.Is(err, ErrUnsupported) {
			t.Fatalf("whole reader: %+v, %v; one-byte reader: %+v, %v", info, err, info2, err2)
		}
	})
}

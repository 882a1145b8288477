package ai

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"image"
	"image/color"
	"image/draw"
	"image/jpeg"
	"math/bits"
	"strconv"
	"testing"
)

type byteOrder interface {
	binary.ByteOrder
	binary.AppendByteOrder
}

// tiff builds a minimal TIFF block whose IFD0 holds the given entries.
func tiff(bo byteOrder, entries ...[12]byte) []byte {
	var b []byte
	if bo.String() == binary.LittleEndian.String() {
		b = []byte("II")
	} else {
		b = []byte("MM")
	}
	b = bo.AppendUint16(b, 42)
	b = bo.AppendUint32(b, 8)
	b = bo.AppendUint16(b, uint16(len(entries)))
	for _, e := range entries {
		b = append(b, e[:]...)
	}
	return bo.AppendUint32(b, 0)
}

func entry(bo binary.ByteOrder, tag, typ uint16, count uint32, value uint16) [12]byte {
	var e [12]byte
	bo.PutUint16(e[0:], tag)
	bo.PutUint16(e[2:], typ)
	bo.PutUint32(e[4:], count)
	bo.PutUint16(e[8:], value)
	return e
}

// withExif inserts an APP1 Exif segment holding tiffBlock after the SOI of
// the JPEG file j.
func withExif(j, tiffBlock []byte) []byte {
	payload := append([]byte("Exif\x00\x00"), tiffBlock...)
	seg := []byte{0xFF, 0xE1}
	seg = binary.BigEndian.AppendUint16(seg, uint16(2+len(payload)))
	seg = append(seg, payload...)
	out := append([]byte{}, j[:2]...)
	out = append(out, seg...)
	return append(out, j[2:]...)
}

func TestJPEGOrientation(t *testing.T) {
	t.Parallel()
	le, be := binary.LittleEndian, binary.BigEndian
	soi := []byte{0xFF, 0xD8}
	sos := []byte{0xFF, 0xDA, 0x00, 0x02}
	app0 := []byte{0xFF, 0xE0, 0x00, 0x07, 'J', 'F', 'I', 'F', 0}
	jpegWith := func(tiffBlock []byte) []byte {
		return withExif(append(append(append([]byte{}, soi...), app0...), sos...), tiffBlock)
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want int
	}{
		{"little endian 6", jpegWith(tiff(le, entry(le, 0x0100, 3, 1, 640), entry(le, 0x0112, 3, 1, 6))), 6},
		{"big endian 8", jpegWith(tiff(be, entry(be, 0x0112, 3, 1, 8))), 8},
		{"big endian 3 after other tags", jpegWith(tiff(be, entry(be, 0x010F, 2, 4, 0), entry(be, 0x0110, 2, 4, 0), entry(be, 0x0112, 3, 1, 3))), 3},
		{"no orientation tag", jpegWith(tiff(le, entry(le, 0x0100, 3, 1, 640))), 1},
		{"out of range value", jpegWith(tiff(le, entry(le, 0x0112, 3, 1, 9))), 1},
		{"zero value", jpegWith(tiff(le, entry(le, 0x0112, 3, 1, 0))), 1},
		{"wrong type", jpegWith(tiff(le, entry(le, 0x0112, 4, 1, 6))), 1},
		{"entry count past the end", jpegWith(append(tiff(le)[:8], 0xFF, 0xFF)), 1},
		{"IFD offset past the end", jpegWith([]byte("II*\x00\xff\xff\xff\x7f")), 1},
		{"bad byte order", jpegWith([]byte("XX*\x00\x08\x00\x00\x00\x00\x00")), 1},
		{"segment length past the end", append(append([]byte{}, soi...), 0xFF, 0xE1, 0xFF, 0xFF, 'E', 'x'), 1},
		{"no Exif", append(append(append([]byte{}, soi...), app0...), sos...), 1},
		{"Exif after the scan is ignored", append(append(append([]byte{}, soi...), sos...), withExif(soi, tiff(le, entry(le, 0x0112, 3, 1, 6)))[2:]...), 1},
		{"not a JPEG", []byte("\x89PNG\r\n\x1a\n"), 1},
		{"empty", nil, 1},
	} {
		if got := jpegOrientation(tc.b); got != tc.want {
			t.Errorf("%s: jpegOrientation = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// asymmetric paints a card whose every rotation and mirror looks different.
func asymmetric(w, h int) *image.RGBA {
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(m, m.Bounds(), image.NewUniform(color.Gray{200}), image.Point{}, draw.Src)
	draw.Draw(m, image.Rect(0, 0, w/3, h/2), image.NewUniform(color.Gray{20}), image.Point{}, draw.Src)
	draw.Draw(m, image.Rect(w/2, h*2/3, w, h), image.NewUniform(color.Gray{90}), image.Point{}, draw.Src)
	draw.Draw(m, image.Rect(w/2, h/8, w*5/8, h/2), image.NewUniform(color.Gray{0}), image.Point{}, draw.Src)
	return m
}

// rotateCCW returns m turned 90° counter-clockwise, which is what a camera
// stores, with orientation 6, for a scene that is m.
func rotateCCW(m *image.RGBA) *image.RGBA {
	b := m.Bounds()
	out := image.NewRGBA(image.Rect(0, 0, b.Dy(), b.Dx()))
	for y := range b.Dy() {
		for x := range b.Dx() {
			out.Set(y, b.Dx()-1-x, m.At(x, y))
		}
	}
	return out
}

func TestPHashFollowsOrientation(t *testing.T) {
	t.Parallel()
	encode := func(m image.Image) []byte {
		var buf bytes.Buffer
		if err := jpeg.Encode(&buf, m, &jpeg.Options{Quality: 95}); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	type res struct {
		Width, Height, Orientation int
		PHash                      string
	}
	b := NewBuiltin(BuiltinConfig{})
	analyze := func(data []byte) res {
		raw, err := b.Analyze(t.Context(), Image{AssetID: "a", Body: bytes.NewReader(data)})
		if err != nil {
			t.Fatal(err)
		}
		var r res
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	distance := func(a, b string) int {
		x, _ := strconv.ParseUint(a, 16, 64)
		y, _ := strconv.ParseUint(b, 16, 64)
		return bits.OnesCount64(x ^ y)
	}

	upright := asymmetric(640, 480)
	stored := encode(rotateCCW(upright))
	plain := analyze(encode(upright))
	tagged := analyze(withExif(stored, tiff(binary.BigEndian, entry(binary.BigEndian, 0x0112, 3, 1, 6))))
	untagged := analyze(stored)

	if tagged.Orientation != 6 || tagged.Width != 480 || tagged.Height != 640 {
		t.Errorf("tagged: orientation %d, %dx%d; want 6 and the stored 480x640", tagged.Orientation, tagged.Width, tagged.Height)
	}
	if d := distance(plain.PHash, tagged.PHash); d > 4 {
		t.Errorf("upright %s and rotated+tagged %s differ in %d bits; want ≤ 4", plain.PHash, tagged.PHash, d)
	}
	if d := distance(plain.PHash, untagged.PHash); d < 16 {
		t.Errorf("upright %s and rotated-without-tag %s differ in only %d bits; want ≥ 16", plain.PHash, untagged.PHash, d)
	}
}

func TestOrientIsTheInverseOfTheCameraTransform(t *testing.T) {
	t.Parallel()
	// Orientation 6 stores the scene turned 90° counter-clockwise; turning
	// the stored grid as the tag says must give back the scene.
	const n = hashGrid
	scene := make([]float64, n*n)
	for i := range scene {
		scene[i] = float64(i)
	}
	stored := make([]float64, n*n)
	for y := range n {
		for x := range n {
			stored[(n-1-x)*n+y] = scene[y*n+x] // (x,y) → (y, n-1-x)
		}
	}
	got := orient(stored, 6)
	for i := range got {
		if got[i] != scene[i] {
			t.Fatalf("orient(ccw(scene), 6)[%d] = %v, want %v", i, got[i], scene[i])
		}
	}
	// Each orientation is a distinct permutation, and 1 is the identity.
	seen := map[float64]int{}
	for o := 1; o <= 8; o++ {
		g := orient(scene, o)
		if prev, dup := seen[g[1]*1e6+g[n]]; dup {
			t.Errorf("orientations %d and %d map the grid alike", prev, o)
		}
		seen[g[1]*1e6+g[n]] = o
	}
	if g := orient(scene, 1); g[5] != scene[5] {
		t.Error("orientation 1 moved pixels")
	}
}

func TestReduceYCbCrMatchesGenericPath(t *testing.T) {
	t.Parallel()
	// Sharp luma and smooth, moderate chroma: every YCbCr triple stays in the
	// RGB gamut, where averaging before and after conversion agree.
	pattern := asymmetric(613, 389) // k=2, with a remainder row and column
	for _, ratio := range []image.YCbCrSubsampleRatio{image.YCbCrSubsampleRatio444, image.YCbCrSubsampleRatio422, image.YCbCrSubsampleRatio420} {
		ycc := image.NewYCbCr(pattern.Bounds(), ratio)
		for y := range 389 {
			for x := range 613 {
				ycc.Y[ycc.YOffset(x, y)] = 40 + pattern.Pix[pattern.PixOffset(x, y)]*3/4
				ycc.Cb[ycc.COffset(x, y)] = uint8(100 + x*50/613)
				ycc.Cr[ycc.COffset(x, y)] = uint8(150 - y*50/389)
			}
		}
		fast, err := reduce(t.Context(), ycc, workSize)
		if err != nil {
			t.Fatal(err)
		}
		generic, err := reduce(t.Context(), struct{ image.Image }{ycc}, workSize) // hides the concrete type
		if err != nil {
			t.Fatal(err)
		}
		if fast.Rect != generic.Rect || fast.Rect.Dx() != 306 || fast.Rect.Dy() != 194 {
			t.Fatalf("%v: sizes %v and %v, want 306x194", ratio, fast.Rect, generic.Rect)
		}
		worst := 0
		for i := range fast.Pix {
			worst = max(worst, abs(int(fast.Pix[i])-int(generic.Pix[i])))
		}
		if worst > 2 {
			t.Errorf("%v: fast path differs from the generic one by up to %d levels", ratio, worst)
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func TestDecodeSlotWaitHonoursContext(t *testing.T) {
	t.Parallel()
	b := NewBuiltin(BuiltinConfig{MaxConcurrentDecodes: 1})
	b.decodes <- struct{}{} // another analysis holds the only slot
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, asymmetric(300, 200), nil); err != nil {
		t.Fatal(err)
	}
	go func() {
		_, err := b.Analyze(ctx, Image{AssetID: "a", Body: &buf})
		done <- err
	}()
	cancel()
	err := <-done
	if !errors.Is(err, context.Canceled) || IsPermanent(err) {
		t.Fatalf("err = %v; want retryable, wrapping context.Canceled", err)
	}
	<-b.decodes // the slot is free again
	if _, err := b.Analyze(t.Context(), Image{AssetID: "a", Body: bytes.NewReader(buf.Bytes())}); err != nil {
		t.Fatalf("Analyze after the slot freed: %v", err)
	}
	select {
	case b.decodes <- struct{}{}:
	default:
		t.Error("Analyze did not give its decode slot back")
	}
}

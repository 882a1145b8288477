package imageinfo

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// Builders for crafted ISO-BMFF files.

func u16(v uint16) []byte        { return binary.BigEndian.AppendUint16(nil, v) }
func u32(v uint32) []byte        { return binary.BigEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte        { return binary.BigEndian.AppendUint64(nil, v) }
func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// box is a box with a correct 32-bit size.
func box(typ string, body ...[]byte) []byte {
	b := cat(body...)
	return cat(u32(uint32(8+len(b))), []byte(typ), b)
}

// sizedBox is a box whose size field says size, whatever its body.
func sizedBox(size uint32, typ string, body ...[]byte) []byte {
	return cat(u32(size), []byte(typ), cat(body...))
}

// largeBox is a box with a correct 64-bit size (size field 1).
func largeBox(typ string, body ...[]byte) []byte {
	b := cat(body...)
	return cat(u32(1), []byte(typ), u64(uint64(16+len(b))), b)
}

func fullBox(typ string, version byte, flags uint32, body ...[]byte) []byte {
	vf := []byte{version, byte(flags >> 16), byte(flags >> 8), byte(flags)}
	return box(typ, append([][]byte{vf}, body...)...)
}

func ftyp(major string, compatible ...string) []byte {
	return box("ftyp", []byte(major), u32(0), []byte(strings.Join(compatible, "")))
}

func ispe(w, h uint32) []byte { return fullBox("ispe", 0, 0, u32(w), u32(h)) }
func pitm(id uint16) []byte   { return fullBox("pitm", 0, 0, u16(id)) }
func hvcC() []byte            { return box("hvcC", make([]byte, 23)) }
func meta(children ...[]byte) []byte {
	return fullBox("meta", 0, 0, append([][]byte{fullBox("hdlr", 0, 0, u32(0), []byte("pict"), make([]byte, 13))}, children...)...)
}

// ipma0 is a version-0, 7-bit-index ipma; each entry is item id, property numbers.
func ipma0(entries ...[]uint16) []byte {
	b := u32(uint32(len(entries)))
	for _, e := range entries {
		b = cat(b, u16(e[0]), []byte{byte(len(e) - 1)})
		for _, p := range e[1:] {
			b = append(b, byte(p))
		}
	}
	return fullBox("ipma", 0, 0, b)
}

var mdat = box("mdat", make([]byte, 64))

// properties: 1 hvcC, 2 ispe 1280x960 (say, an auxiliary image), 3 ispe 640x480.
func props() []byte { return box("ipco", hvcC(), ispe(1280, 960), ispe(640, 480)) }

// standardMeta has primary item 2 at 640x480, while item 1 is larger, so the
// primary path and the largest-ispe fallback give different answers.
func standardMeta() []byte {
	return meta(pitm(2), box("iprp", props(), ipma0([]uint16{1, 0x81, 2}, []uint16{2, 0x81, 3})))
}

func heicFile(m []byte) []byte { return cat(ftyp("heic", "mif1", "heic"), m, mdat) }

// nested returns depth boxes of type typ, each the only child of the previous.
func nested(typ string, depth int) []byte {
	b := make([]byte, 0, 8*depth)
	for i := range depth {
		b = append(b, u32(uint32(8*(depth-i)))...)
		b = append(b, typ...)
	}
	return b
}

type heifCase struct {
	name    string
	data    []byte
	want    Info
	wantErr error
	msg     string // a substring the error must contain, if set
}

var (
	heic640  = Info{HEIC, "image/heic", 640, 480}
	heic1280 = Info{HEIC, "image/heic", 1280, 960}
	heif640  = Info{HEIF, "image/heif", 640, 480}
)

func heifCases() []heifCase {
	iprp := func(children ...[]byte) []byte { return box("iprp", children...) }
	return []heifCase{
		// Which ispe.
		{name: "primary item", data: heicFile(standardMeta()), want: heic640},
		{name: "no pitm: largest ispe", data: heicFile(meta(iprp(props(), ipma0([]uint16{1, 2}, []uint16{2, 3})))), want: heic1280},
		{name: "no ipma: largest ispe", data: heicFile(meta(pitm(2), iprp(props()))), want: heic1280},
		{name: "pitm and ipma version 1, 15-bit indices", want: heic640, data: heicFile(meta(
			fullBox("pitm", 1, 0, u32(70000)),
			iprp(props(), fullBox("ipma", 1, 1, u32(2),
				u32(1), []byte{2}, u16(0x8001), u16(2),
				u32(70000), []byte{2}, u16(0x8001), u16(3)))))},
		{name: "boxes after iprp and several ipma", want: heic640, data: heicFile(meta(pitm(2),
			iprp(props(), ipma0([]uint16{1, 2}), ipma0([]uint16{2, 1, 3})), box("iinf", u32(0)), box("idat")))},

		// Brands.
		{name: "major mif1 only", data: cat(ftyp("mif1"), standardMeta()), want: heif640},
		{name: "major msf1", data: cat(ftyp("msf1", "iso8"), standardMeta()), want: heif640},
		{name: "major heix", data: cat(ftyp("heix"), standardMeta()), want: heic640},
		{name: "major heim", data: cat(ftyp("heim"), standardMeta()), want: heic640},
		{name: "major heis", data: cat(ftyp("heis"), standardMeta()), want: heic640},
		{name: "major hevc", data: cat(ftyp("hevc"), standardMeta()), want: heic640},
		{name: "major hevx", data: cat(ftyp("hevx"), standardMeta()), want: heic640},
		{name: "major mif1, compatible heic", data: cat(ftyp("mif1", "heic"), standardMeta()), want: heic640},
		{name: "major isom, compatible mif1", data: cat(ftyp("isom", "mif1"), standardMeta()), want: heif640},
		{name: "AVIF", data: cat(ftyp("avif", "mif1", "miaf"), standardMeta()), wantErr: ErrUnsupported, msg: "AVIF"},
		{name: "AVIF sequence", data: cat(ftyp("avis", "msf1", "heic"), standardMeta()), wantErr: ErrUnsupported, msg: "AVIF"},
		{name: "major mif1, compatible avif", data: cat(ftyp("mif1", "avif"), standardMeta()), wantErr: ErrUnsupported, msg: "AVIF"},
		{name: "major mif1, compatible avif and heic", data: cat(ftyp("mif1", "avif", "heic"), standardMeta()), want: heic640},
		{name: "MP4", data: cat(ftyp("mp42", "isom"), box("moov")), wantErr: ErrUnsupported, msg: `"mp42"`},
		{name: "QuickTime", data: cat(ftyp("qt  "), box("moov")), wantErr: ErrUnsupported},
		{name: "ftyp not first", data: cat(box("free"), ftyp("heic"), standardMeta()), wantErr: ErrUnsupported},

		// ftyp.
		{name: "ftyp truncated", data: ftyp("heic", "mif1")[:12], wantErr: ErrInvalid, msg: "truncated"},
		{name: "ftyp smaller than a brand list", data: cat(sizedBox(12, "ftyp", []byte("heic")), standardMeta()), wantErr: ErrInvalid},
		{name: "ftyp size 0", data: cat(sizedBox(0, "ftyp", []byte("heic"), u32(0))), wantErr: ErrInvalid},
		{name: "MP4 with a broken ftyp", data: sizedBox(12, "ftyp", []byte("mp42")), wantErr: ErrUnsupported},
		{name: "ftyp huge", data: cat(sizedBox(0xFFFFFFFF, "ftyp", []byte("heic"), u32(0))), wantErr: ErrInvalid},
		{name: "ftyp with a trailing partial brand", data: cat(box("ftyp", []byte("heic"), u32(0), []byte("mi")), standardMeta()), want: heic640},

		// Top-level boxes.
		{name: "only ftyp", data: ftyp("heic"), wantErr: ErrInvalid, msg: "no meta box"},
		{name: "no meta box", data: cat(ftyp("heic"), mdat), wantErr: ErrInvalid, msg: "no meta box"},
		{name: "mdat before meta", data: cat(ftyp("heic"), mdat, standardMeta()), want: heic640},
		{name: "64-bit free box before meta", data: cat(ftyp("heic"), largeBox("free", make([]byte, 10)), standardMeta()), want: heic640},
		{name: "size-0 mdat before meta", data: cat(ftyp("heic"), sizedBox(0, "mdat"), standardMeta()), wantErr: ErrInvalid},
		{name: "huge box before meta", data: cat(ftyp("heic"), sizedBox(0xFFFFFFFF, "mdat")), wantErr: ErrInvalid, msg: "4 MiB"},
		{name: "huge 64-bit box before meta", data: cat(ftyp("heic"), sizedBox(1, "mdat", u64(1<<62))), wantErr: ErrInvalid},
		{name: "64-bit size beyond int64", data: cat(ftyp("heic"), sizedBox(1, "mdat", u64(1<<64-1))), wantErr: ErrInvalid},
		{name: "size smaller than the header", data: cat(ftyp("heic"), sizedBox(4, "free"), standardMeta()), wantErr: ErrInvalid, msg: "smaller than its header"},
		{name: "64-bit size smaller than the header", data: cat(ftyp("heic"), sizedBox(1, "free", u64(12)), standardMeta()), wantErr: ErrInvalid},
		{name: "box header truncated", data: cat(ftyp("heic"), []byte{0, 0, 0}), wantErr: ErrInvalid, msg: "truncated"},
		{name: "64-bit box header truncated", data: cat(ftyp("heic"), u32(1), []byte("meta"), []byte{0, 0}), wantErr: ErrInvalid},
		{name: "deeply nested top-level boxes", data: cat(ftyp("heic"), nested("moov", 100_000)), wantErr: ErrInvalid},

		// The meta box.
		{name: "meta size 0", data: cat(ftyp("heic"), sizedBox(0, "meta", standardMeta()[8:])), want: heic640},
		{name: "meta 64-bit size", data: cat(ftyp("heic"), largeBox("meta", standardMeta()[8:]), mdat), want: heic640},
		{name: "meta over 1 MiB", data: cat(ftyp("heic"), sizedBox(2<<20, "meta")), wantErr: ErrInvalid, msg: "1 MiB"},
		{name: "meta size 0 over 1 MiB", data: cat(ftyp("heic"), sizedBox(0, "meta", make([]byte, 1<<20+1))), wantErr: ErrInvalid, msg: "1 MiB"},
		{name: "meta truncated", data: heicFile(standardMeta())[:60], wantErr: ErrInvalid, msg: "truncated"},
		{name: "meta without version and flags", data: cat(ftyp("heic"), box("meta", []byte{0, 0})), wantErr: ErrInvalid},
		{name: "deeply nested iprp", data: cat(ftyp("heic"), meta(nested("iprp", 100_000))), wantErr: ErrInvalid, msg: "ipco"},
		{name: "deeply nested meta", data: cat(ftyp("heic"), meta(nested("meta", 100_000))), wantErr: ErrInvalid, msg: "iprp"},
		{name: "no iprp", data: heicFile(meta(pitm(1))), wantErr: ErrInvalid, msg: "iprp"},
		{name: "no ipco", data: heicFile(meta(pitm(1), iprp(ipma0([]uint16{1, 1})))), wantErr: ErrInvalid, msg: "ipco"},
		{name: "pitm truncated", data: heicFile(meta(box("pitm", []byte{0, 0, 0, 0, 2}), iprp(props()))), wantErr: ErrInvalid, msg: "pitm"},
		{name: "child overruns meta", data: heicFile(meta(sizedBox(1000, "iprp", props()))), wantErr: ErrInvalid, msg: "overruns"},
		{name: "child smaller than its header", data: heicFile(meta(sizedBox(7, "iprp", props()))), wantErr: ErrInvalid},
		{name: "child 64-bit header truncated", data: heicFile(meta(pitm(1), u32(1), []byte("iprp"))), wantErr: ErrInvalid},
		{name: "child 64-bit size over the parent", data: heicFile(meta(sizedBox(1, "iprp", u64(1<<40)))), wantErr: ErrInvalid},
		{name: "property overruns ipco", data: heicFile(meta(iprp(box("ipco", sizedBox(100, "ispe", u32(0), u32(640), u32(480)))))), wantErr: ErrInvalid},
		{name: "size-0 property runs to the end of ipco", data: heicFile(meta(iprp(box("ipco", hvcC(), sizedBox(0, "ispe", u32(0), u32(640), u32(480)))))), want: heic640},

		// ispe and ipma.
		{name: "missing ispe", data: heicFile(meta(pitm(1), iprp(box("ipco", hvcC()), ipma0([]uint16{1, 1})))), wantErr: ErrInvalid, msg: "ispe"},
		{name: "missing ispe, no pitm", data: heicFile(meta(iprp(box("ipco", hvcC())))), wantErr: ErrInvalid, msg: "ispe"},
		{name: "primary without ispe", data: heicFile(meta(pitm(2), iprp(props(), ipma0([]uint16{1, 2}, []uint16{2, 1})))), wantErr: ErrInvalid, msg: "ispe"},
		{name: "primary not in ipma", data: heicFile(meta(pitm(9), iprp(props(), ipma0([]uint16{1, 2})))), wantErr: ErrInvalid, msg: "primary item 9"},
		{name: "primary refers to a missing property", data: heicFile(meta(pitm(1), iprp(props(), ipma0([]uint16{1, 1, 7})))), wantErr: ErrInvalid, msg: "property 7 of 3"},
		{name: "property 0 is no property", data: heicFile(meta(pitm(1), iprp(props(), ipma0([]uint16{1, 0, 3})))), want: heic640},
		{name: "ipma count without entries", data: heicFile(meta(pitm(1), iprp(props(), fullBox("ipma", 0, 0, u32(0xFFFFFFFF))))), wantErr: ErrInvalid, msg: "ipma"},
		{name: "ipma entry truncated", data: heicFile(meta(pitm(1), iprp(props(), fullBox("ipma", 0, 1, u32(1), u16(1), []byte{2}, u16(3))))), wantErr: ErrInvalid, msg: "ipma"},
		{name: "ipma shorter than its count", data: heicFile(meta(pitm(1), iprp(props(), fullBox("ipma", 0, 0)))), wantErr: ErrInvalid, msg: "ipma"},
		{name: "ispe truncated", data: heicFile(meta(iprp(box("ipco", fullBox("ispe", 0, 0, u32(640)))))), wantErr: ErrInvalid, msg: "ispe"},
		{name: "ispe zero width", data: heicFile(meta(iprp(box("ipco", ispe(0, 480))))), wantErr: ErrInvalid, msg: "0x480"},
		{name: "ispe zero height", data: heicFile(meta(iprp(box("ipco", ispe(640, 0))))), wantErr: ErrInvalid},
		{name: "ispe over int32", data: heicFile(meta(iprp(box("ipco", ispe(1<<31, 1))))), wantErr: ErrInvalid},
		{name: "ispe at int32 max", data: heicFile(meta(iprp(box("ipco", ispe(1<<31-1, 1<<31-1))))), want: Info{HEIC, "image/heic", 1<<31 - 1, 1<<31 - 1}},
	}
}

func TestInspectHEIF(t *testing.T) {
	t.Parallel()
	for _, tc := range heifCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Inspect(bytes.NewReader(tc.data))
			if tc.wantErr != nil {
				checkErr(t, err, tc.wantErr)
				if !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("err = %q; want it to mention %q", err, tc.msg)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Inspect = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// A box too large to skip within the cap is refused from its header, not
// after reading up to the cap.
func TestInspectHEIFRefusesHugeBoxWithoutReadingIt(t *testing.T) {
	t.Parallel()
	data := cat(ftyp("heic"), sizedBox(8<<20, "mdat"), make([]byte, 8<<20), standardMeta())
	cr := &countingReader{r: bytes.NewReader(data)}
	_, err := Inspect(cr)
	checkErr(t, err, ErrInvalid)
	if cr.n > 8<<10 {
		t.Errorf("Inspect read %d bytes to refuse an 8 MiB box", cr.n)
	}
}

// Skipping boxes before meta counts against MaxHeaderBytes like any other read.
func TestInspectHEIFSkipsWithinCap(t *testing.T) {
	t.Parallel()
	const chunk = 1 << 20
	var boxes []byte
	for range 5 {
		boxes = append(boxes, sizedBox(chunk+8, "free", make([]byte, chunk))...)
	}
	for _, tc := range []struct {
		n       int
		wantErr error
	}{{3, nil}, {5, ErrInvalid}} {
		data := cat(ftyp("heic"), boxes[:tc.n*(chunk+8)], standardMeta())
		got, err := Inspect(bytes.NewReader(data))
		if tc.wantErr != nil {
			checkErr(t, err, tc.wantErr)
			continue
		}
		if err != nil || got != heic640 {
			t.Errorf("%d MiB before meta: Inspect = %+v, %v", tc.n, got, err)
		}
	}
}

// BenchmarkInspectHEIFWorstCase measures the most expensive meta box Inspect
// accepts to parse: 1 MiB of empty properties, the primary item associated
// with 255 of them, none an ispe. It must stay linear in the box's size.
func BenchmarkInspectHEIFWorstCase(b *testing.B) {
	n := (MaxHEIFMetaBytes - 4096) / 8
	ipco := make([]byte, 0, 8*n)
	for range n {
		ipco = append(ipco, box("free")...)
	}
	assoc := []uint16{1}
	for i := range 255 {
		assoc = append(assoc, uint16(i+1))
	}
	data := heicFile(meta(pitm(1), box("iprp", box("ipco", ipco), ipma0(assoc))))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Inspect(bytes.NewReader(data)); !errors.Is(err, ErrInvalid) {
			b.Fatal(err)
		}
	}
}

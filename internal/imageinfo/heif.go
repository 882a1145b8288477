package imageinfo

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
)

// HEIF (ISO/IEC 23008-12) is an ISO-BMFF file: a sequence of boxes, each
// headed by a 32-bit size and a four-character type (size 1: a 64-bit size
// follows; size 0: the box runs to the end of its container). The image size
// lives in one place:
//
//	ftyp                      brands: is it HEIF at all, HEIC or other HEIF, or AVIF
//	meta (FullBox)
//	  pitm                    the primary item's id
//	  iprp
//	    ipco                  properties, numbered from 1 in order; ispe = width, height
//	    ipma                  item id → property numbers
//
// The parser walks only that fixed path, so nesting depth is bounded by
// construction (four levels) rather than by a counter, and nothing is
// recursive. Top-level boxes before meta are skipped within MaxHeaderBytes;
// meta is read whole (at most MaxHEIFMetaBytes) and every box inside it is
// checked against its parent's bounds before it is looked at.

// brandKind sorts ftyp brands (ISO/IEC 23008-12 Annex B; AVIF: the AV1 Image
// File Format, which reuses HEIF's structure and the mif1 brand).
type brandKind int

const (
	otherBrand brandKind = iota
	heicBrand            // HEVC-coded images or sequences
	heifBrand            // HEIF, codec not implied
	avifBrand            // AV1-coded: not accepted
)

func kindOf(brand string) brandKind {
	switch brand {
	case "heic", "heix", "heim", "heis", "hevc", "hevx":
		return heicBrand
	case "mif1", "msf1":
		return heifBrand
	case "avif", "avis":
		return avifBrand
	default:
		return otherBrand
	}
}

// maxFtypBytes caps the ftyp box: 8 bytes plus 4 per compatible brand, so a
// few dozen bytes in practice.
const maxFtypBytes = 4096

// inspectHEIF reads an ISO-BMFF file from its start. Its errors either wrap
// ErrUnsupported or ErrInvalid, or are read errors of r (io.EOF and
// io.ErrUnexpectedEOF meaning truncation) for the caller to classify. The
// Format is "" until the brands are known.
//
// major is the major brand as it appears at offset 8, used only when the ftyp
// box itself is unreadable: a file that says heic there is a broken HEIC
// (ErrInvalid); one that says mp42 is an unsupported video, broken or not.
func inspectHEIF(r io.Reader, major string) (f Format, w, h int, err error) {
	ftyp, err := readFtyp(r)
	if err != nil {
		heif := kindOf(major) == heicBrand || kindOf(major) == heifBrand
		malformed := errors.Is(err, ErrInvalid) || errors.Is(err, io.ErrUnexpectedEOF)
		if heif || !malformed {
			return "", 0, 0, err
		}
		return "", 0, 0, fmt.Errorf("%w: an ISO-BMFF file of brand %q with a malformed ftyp box, not HEIF (%s)",
			ErrUnsupported, major, accepted)
	}
	f, err = classify(ftyp)
	if err != nil {
		return "", 0, 0, err
	}

	for {
		typ, n, err := readBoxHeader(r)
		if err == io.EOF {
			return f, 0, 0, fmt.Errorf("%w: no meta box in the %s file", ErrInvalid, name(f))
		}
		if err != nil {
			return f, 0, 0, err
		}
		if typ == "meta" {
			meta, err := readMeta(r, n)
			if err != nil {
				return f, 0, 0, err
			}
			w, h, err := parseMeta(meta)
			return f, w, h, err
		}
		if n < 0 {
			return f, 0, 0, fmt.Errorf("%w: no meta box before the %q box that fills the rest of the file", ErrInvalid, typ)
		}
		if n > MaxHeaderBytes {
			return f, 0, 0, fmt.Errorf("%w: a %d-byte %q box comes before the meta box, past the %d MiB header limit",
				ErrInvalid, n, typ, MaxHeaderBytes>>20)
		}
		if _, err := io.CopyN(io.Discard, r, n); err != nil {
			return f, 0, 0, err
		}
	}
}

// readFtyp reads the ftyp box, which HEIF requires to come first, and returns
// its body: major brand, minor version, compatible brands.
func readFtyp(r io.Reader) ([]byte, error) {
	typ, n, err := readBoxHeader(r)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if typ != "ftyp" || n < 8 || n > maxFtypBytes {
		return nil, fmt.Errorf("%w: malformed ftyp box", ErrInvalid)
	}
	ftyp := make([]byte, n)
	if _, err := io.ReadFull(r, ftyp); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return ftyp, nil
}

// classify decides the format from the ftyp box body (major brand, minor
// version, compatible brands). A HEIC brand wins over a generic HEIF one; an
// AVIF brand as major, or anywhere without a HEIC brand, makes the file AVIF,
// which the pipeline does not accept even though AVIF files also carry mif1.
func classify(ftyp []byte) (Format, error) {
	major := string(ftyp[:4])
	var seen [avifBrand + 1]bool
	seen[kindOf(major)] = true
	for b := ftyp[8:]; len(b) >= 4; b = b[4:] {
		seen[kindOf(string(b[:4]))] = true
	}
	switch {
	case kindOf(major) == avifBrand:
		return "", fmt.Errorf("%w: AVIF (%s)", ErrUnsupported, accepted)
	case seen[heicBrand]:
		return HEIC, nil
	case seen[avifBrand]:
		return "", fmt.Errorf("%w: AVIF (%s)", ErrUnsupported, accepted)
	case seen[heifBrand]:
		return HEIF, nil
	default:
		return "", fmt.Errorf("%w: an ISO-BMFF file of brand %q, not HEIF (%s)", ErrUnsupported, major, accepted)
	}
}

// readBoxHeader reads a top-level box header and returns the box type and the
// length of its body, -1 if it extends to the end of the file. It returns
// io.EOF only when r ends cleanly before the header.
func readBoxHeader(r io.Reader) (typ string, n int64, err error) {
	var b [16]byte
	if _, err := io.ReadFull(r, b[:8]); err != nil {
		return "", 0, err
	}
	size := uint64(binary.BigEndian.Uint32(b[:4]))
	typ = string(b[4:8])
	hdr := uint64(8)
	switch size {
	case 0:
		return typ, -1, nil
	case 1:
		if _, err := io.ReadFull(r, b[8:16]); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return "", 0, err
		}
		size = binary.BigEndian.Uint64(b[8:16])
		hdr = 16
	}
	if size < hdr {
		return "", 0, fmt.Errorf("%w: %q box of %d bytes is smaller than its header", ErrInvalid, typ, size)
	}
	if size-hdr > math.MaxInt64 {
		return "", 0, fmt.Errorf("%w: %q box of %d bytes is too large", ErrInvalid, typ, size)
	}
	return typ, int64(size - hdr), nil
}

// readMeta reads the body of the meta box, n bytes or (n < 0) the rest of r.
func readMeta(r io.Reader, n int64) ([]byte, error) {
	if n > MaxHEIFMetaBytes {
		return nil, fmt.Errorf("%w: the meta box is %d bytes; the limit is %d MiB", ErrInvalid, n, MaxHEIFMetaBytes>>20)
	}
	if n < 0 {
		// Read one byte past the cap to tell "exactly at the cap" from "over it".
		b, err := io.ReadAll(io.LimitReader(r, MaxHEIFMetaBytes+1))
		if err != nil {
			return nil, err
		}
		if len(b) > MaxHEIFMetaBytes {
			return nil, fmt.Errorf("%w: the meta box exceeds the %d MiB limit", ErrInvalid, MaxHEIFMetaBytes>>20)
		}
		return b, nil
	}
	// ReadAll grows with what actually arrives, so a truncated file that
	// declares a large box does not cost the declared size in memory.
	b, err := io.ReadAll(io.LimitReader(r, n))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) < n {
		return nil, io.ErrUnexpectedEOF
	}
	return b, nil
}

// nextBox splits the first box off b, a container's body. A size-0 box runs
// to the end of b; a box reaching past b is malformed.
func nextBox(b []byte) (typ boxType, body, rest []byte, err error) {
	if len(b) < 8 {
		return typ, nil, nil, fmt.Errorf("%w: truncated box header in the meta box", ErrInvalid)
	}
	size := uint64(binary.BigEndian.Uint32(b[:4]))
	typ = boxType(b[4:8])
	hdr := uint64(8)
	switch size {
	case 0:
		size = uint64(len(b))
	case 1:
		if len(b) < 16 {
			return typ, nil, nil, fmt.Errorf("%w: truncated %q box header", ErrInvalid, typ)
		}
		size = binary.BigEndian.Uint64(b[8:16])
		hdr = 16
	}
	if size < hdr {
		return typ, nil, nil, fmt.Errorf("%w: %q box of %d bytes is smaller than its header", ErrInvalid, typ, size)
	}
	if size > uint64(len(b)) {
		return typ, nil, nil, fmt.Errorf("%w: %q box of %d bytes overruns its container", ErrInvalid, typ, size)
	}
	return typ, b[hdr:size], b[size:], nil
}

// boxType is a four-character box type, kept as an array so that walking a
// meta box of many small boxes allocates nothing.
type boxType [4]byte

func (t boxType) is(s string) bool { return string(t[:]) == s }
func (t boxType) String() string   { return string(t[:]) }

// propertySet is a set of ipco property numbers, which ipma stores in at most
// 15 bits: 4 KiB, kept off the heap.
type propertySet [1 << 15 / 64]uint64

func (s *propertySet) add(i uint16)   { s[i/64] |= 1 << (i % 64) }
func (s *propertySet) has(i int) bool { return i < 1<<15 && s[i/64]&(1<<(i%64)) != 0 }

// max returns the largest number in the set, 0 if it is empty.
func (s *propertySet) max() int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] != 0 {
			return i*64 + 63 - bits.LeadingZeros64(s[i])
		}
	}
	return 0
}

// parseMeta returns the size of the primary image from the meta box body: the
// ispe property associated with the pitm item, or, when the file names no
// primary item or has no associations, the largest ispe in it.
func parseMeta(meta []byte) (w, h int, err error) {
	if len(meta) < 4 {
		return 0, 0, fmt.Errorf("%w: truncated meta box", ErrInvalid)
	}
	var (
		primary    uint32
		hasPrimary bool
		iprp       []byte
		hasIprp    bool
	)
	for b := meta[4:]; len(b) > 0; { // meta is a FullBox: skip version and flags
		typ, body, rest, err := nextBox(b)
		if err != nil {
			return 0, 0, err
		}
		b = rest
		switch {
		case typ.is("pitm") && !hasPrimary:
			primary, err = parsePitm(body)
			if err != nil {
				return 0, 0, err
			}
			hasPrimary = true
		case typ.is("iprp") && !hasIprp:
			iprp, hasIprp = body, true
		}
	}
	if !hasIprp {
		return 0, 0, fmt.Errorf("%w: no item properties (iprp box) in the meta box", ErrInvalid)
	}

	var (
		ipco       []byte
		hasIpco    bool
		hasIpma    bool
		assocFound bool
		props      propertySet
	)
	for b := iprp; len(b) > 0; {
		typ, body, rest, err := nextBox(b)
		if err != nil {
			return 0, 0, err
		}
		b = rest
		switch {
		case typ.is("ipco") && !hasIpco:
			ipco, hasIpco = body, true
		case typ.is("ipma"):
			hasIpma = true
			if hasPrimary && !assocFound {
				assocFound, err = associations(body, primary, &props)
				if err != nil {
					return 0, 0, err
				}
			}
		}
	}
	if !hasIpco {
		return 0, 0, fmt.Errorf("%w: no property container (ipco box) in the meta box", ErrInvalid)
	}

	usePrimary := hasPrimary && hasIpma
	if usePrimary && !assocFound {
		return 0, 0, fmt.Errorf("%w: the primary item %d has no properties", ErrInvalid, primary)
	}
	var (
		best   uint64 // pixels of the largest ispe so far
		found  bool
		index  int // ipco numbers its properties from 1
		bw, bh int
	)
	for b := ipco; len(b) > 0; {
		typ, body, rest, err := nextBox(b)
		if err != nil {
			return 0, 0, err
		}
		b = rest
		index++
		if !typ.is("ispe") || (usePrimary && !props.has(index)) {
			continue
		}
		pw, ph, err := parseIspe(body)
		if err != nil {
			return 0, 0, err
		}
		if usePrimary {
			return pw, ph, nil
		}
		if px := uint64(pw) * uint64(ph); !found || px > best {
			best, bw, bh, found = px, pw, ph, true
		}
	}
	if usePrimary {
		if m := props.max(); m > index {
			return 0, 0, fmt.Errorf("%w: the primary item refers to property %d of %d", ErrInvalid, m, index)
		}
		return 0, 0, fmt.Errorf("%w: the primary item has no size (ispe property)", ErrInvalid)
	}
	if !found {
		return 0, 0, fmt.Errorf("%w: no image size (ispe property) in the file", ErrInvalid)
	}
	return bw, bh, nil
}

// parsePitm returns the primary item id (16 bits in version 0, 32 after).
func parsePitm(b []byte) (uint32, error) {
	switch {
	case len(b) >= 6 && b[0] == 0:
		return uint32(binary.BigEndian.Uint16(b[4:6])), nil
	case len(b) >= 8 && b[0] != 0:
		return binary.BigEndian.Uint32(b[4:8]), nil
	default:
		return 0, fmt.Errorf("%w: truncated pitm box", ErrInvalid)
	}
}

// associations finds item's entry in an ipma box body and adds its property
// numbers to props. The entry count comes from the file, so the loop is bounded
// by the bytes present, not by the count: every entry consumes at least three.
func associations(b []byte, item uint32, props *propertySet) (found bool, err error) {
	truncated := fmt.Errorf("%w: truncated ipma box", ErrInvalid)
	if len(b) < 8 {
		return false, truncated
	}
	version, wide := b[0], b[3]&1 != 0 // flags bit 0: 15-bit property numbers
	count := binary.BigEndian.Uint32(b[4:8])
	b = b[8:]
	for range count {
		var id uint32
		if version < 1 {
			if len(b) < 2 {
				return false, truncated
			}
			id, b = uint32(binary.BigEndian.Uint16(b)), b[2:]
		} else {
			if len(b) < 4 {
				return false, truncated
			}
			id, b = binary.BigEndian.Uint32(b), b[4:]
		}
		if len(b) < 1 {
			return false, truncated
		}
		n := int(b[0])
		b = b[1:]
		for range n {
			var p uint16
			if wide {
				if len(b) < 2 {
					return false, truncated
				}
				p, b = binary.BigEndian.Uint16(b)&0x7FFF, b[2:]
			} else {
				if len(b) < 1 {
					return false, truncated
				}
				p, b = uint16(b[0]&0x7F), b[1:]
			}
			if id == item && p != 0 { // 0 means "no property"
				props.add(p)
			}
		}
		if id == item {
			return true, nil
		}
	}
	return false, nil
}

// parseIspe reads an ispe (image spatial extents) FullBox body.
func parseIspe(b []byte) (w, h int, err error) {
	if len(b) < 12 {
		return 0, 0, fmt.Errorf("%w: truncated ispe box", ErrInvalid)
	}
	uw, uh := binary.BigEndian.Uint32(b[4:8]), binary.BigEndian.Uint32(b[8:12])
	if uw == 0 || uh == 0 || uw > math.MaxInt32 || uh > math.MaxInt32 {
		return 0, 0, fmt.Errorf("%w: the image size %dx%d in the ispe box is impossible", ErrInvalid, uw, uh)
	}
	return int(uw), int(uh), nil
}

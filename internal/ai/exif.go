package ai

import "encoding/binary"

// maxJPEGSegments bounds the marker walk: the Exif APP1 segment comes right
// after SOI (or after a JFIF APP0) in every camera file, so a file that needs
// more steps has none worth trusting.
const maxJPEGSegments = 64

// jpegOrientation returns the EXIF orientation (1–8) from the first APP1 Exif
// segment of the JPEG file b, or 1 when there is none or it is malformed. It
// walks segment headers only, bounded by maxJPEGSegments and by len(b), and
// stops at the first scan: the metadata all precedes it.
func jpegOrientation(b []byte) int {
	if len(b) < 4 || b[0] != 0xFF || b[1] != 0xD8 {
		return 1
	}
	p := 2
	for range maxJPEGSegments {
		if p+4 > len(b) || b[p] != 0xFF {
			return 1
		}
		marker := b[p+1]
		switch {
		case marker == 0xFF: // fill byte
			p++
			continue
		case marker == 0x01 || marker >= 0xD0 && marker <= 0xD8: // no length field
			p += 2
			continue
		case marker == 0xDA || marker == 0xD9: // start of scan, end of image
			return 1
		}
		n := int(binary.BigEndian.Uint16(b[p+2:]))
		if n < 2 || p+2+n > len(b) {
			return 1
		}
		seg := b[p+4 : p+2+n]
		if marker == 0xE1 && len(seg) >= 6 && string(seg[:6]) == "Exif\x00\x00" {
			if o := tiffOrientation(seg[6:]); o >= 1 && o <= 8 {
				return o
			}
			return 1
		}
		p += 2 + n
	}
	return 1
}

// tiffOrientation reads tag 0x0112 (Orientation, a SHORT) from IFD0 of the
// TIFF structure t, or returns 0. Every offset is checked against len(t).
func tiffOrientation(t []byte) int {
	if len(t) < 8 {
		return 0
	}
	var bo binary.ByteOrder
	switch string(t[:2]) {
	case "II":
		bo = binary.LittleEndian
	case "MM":
		bo = binary.BigEndian
	default:
		return 0
	}
	if bo.Uint16(t[2:]) != 42 {
		return 0
	}
	off := uint64(bo.Uint32(t[4:]))
	if off < 8 || off+2 > uint64(len(t)) {
		return 0
	}
	n := uint64(bo.Uint16(t[off:]))
	n = min(n, (uint64(len(t))-off-2)/12)
	for i := range n {
		e := t[off+2+12*i:]
		if bo.Uint16(e) != 0x0112 {
			continue
		}
		if typ, count := bo.Uint16(e[2:]), bo.Uint32(e[4:]); typ != 3 || count != 1 {
			return 0
		}
		return int(bo.Uint16(e[8:]))
	}
	return 0
}

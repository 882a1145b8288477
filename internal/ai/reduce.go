package ai

import (
	"context"
	"image"
	"image/color"
	"image/draw"
)

// reduce shrinks src by the integer factor k = ⌈long side / target⌉ with a box
// filter: every output pixel is the mean of its k×k block (premultiplied
// RGBA), so every source pixel counts and nothing aliases. That matters for the
// measures, which look at fine detail: a point-sampling scaler (such as
// x/image/draw's ApproxBiLinear) turns sensor noise into false sharpness, and
// its kernel scalers allocate a float64 buffer of (output width × source
// height × 32 bytes), ~25 MB for a 12 MP photo.
//
// The source is converted to RGBA one band of k rows at a time through
// image/draw, which has fast paths for the types the decoders return (YCbCr,
// Gray, CMYK, RGBA, NRGBA, Paletted); the extra memory is one band. An image
// already within target is converted whole. ctx is checked between bands.
func reduce(ctx context.Context, src image.Image, target int) (*image.RGBA, error) {
	b := src.Bounds()
	w, h := b.Dx(), b.Dy()
	k := (max(w, h) + target - 1) / target
	if k <= 1 {
		dst := image.NewRGBA(image.Rect(0, 0, w, h))
		draw.Draw(dst, dst.Bounds(), src, b.Min, draw.Src)
		return dst, nil
	}
	dw, dh := max(w/k, 1), max(h/k, 1)
	dst := image.NewRGBA(image.Rect(0, 0, dw, dh))
	if ycc, ok := src.(*image.YCbCr); ok && b.Min == (image.Point{}) {
		if hs, vs, ok := chromaShifts(ycc.SubsampleRatio); ok {
			return dst, reduceYCbCr(ctx, dst, ycc, k, hs, vs)
		}
	}
	band := image.NewRGBA(image.Rect(0, 0, w, k))
	sums := make([]uint32, 4*dw)
	for j := range dh {
		if ctx.Err() != nil {
			return nil, contextError(ctx)
		}
		y0 := b.Min.Y + j*k
		rows := k
		if j == dh-1 {
			rows = b.Max.Y - y0 // the last band takes the remainder rows
		}
		if rows > band.Rect.Dy() {
			band = image.NewRGBA(image.Rect(0, 0, w, rows))
		}
		r := image.Rect(0, 0, w, rows)
		draw.Draw(band, r, src, image.Pt(b.Min.X, y0), draw.Src)
		clear(sums)
		for y := range rows {
			row := band.Pix[y*band.Stride : y*band.Stride+4*w]
			for i := range dw {
				x1 := (i + 1) * k
				if i == dw-1 {
					x1 = w // the last column takes the remainder
				}
				s := sums[4*i : 4*i+4 : 4*i+4]
				for p := 4 * i * k; p < 4*x1; p += 4 {
					s[0] += uint32(row[p])
					s[1] += uint32(row[p+1])
					s[2] += uint32(row[p+2])
					s[3] += uint32(row[p+3])
				}
			}
		}
		out := dst.Pix[j*dst.Stride:]
		for i := range dw {
			cols := k
			if i == dw-1 {
				cols = w - i*k
			}
			n := uint32(cols * rows)
			for c := range 4 {
				out[4*i+c] = uint8((sums[4*i+c] + n/2) / n)
			}
		}
	}
	return dst, nil
}

// chromaShifts returns how many bits a luma coordinate is shifted right to
// index the chroma planes of a subsample ratio.
func chromaShifts(r image.YCbCrSubsampleRatio) (h, v uint, ok bool) {
	switch r {
	case image.YCbCrSubsampleRatio444:
		return 0, 0, true
	case image.YCbCrSubsampleRatio422:
		return 1, 0, true
	case image.YCbCrSubsampleRatio420:
		return 1, 1, true
	case image.YCbCrSubsampleRatio440:
		return 0, 1, true
	case image.YCbCrSubsampleRatio411:
		return 2, 0, true
	case image.YCbCrSubsampleRatio410:
		return 2, 1, true
	}
	return 0, 0, false
}

// reduceYCbCr is reduce for what the JPEG decoder returns, the common case:
// it averages Y, Cb and Cr over each block and converts once per output pixel
// (the conversion is affine, so this equals averaging RGB up to clamping),
// which saves converting every source pixel. src.Rect.Min must be (0, 0).
func reduceYCbCr(ctx context.Context, dst *image.RGBA, src *image.YCbCr, k int, hs, vs uint) error {
	w, h := src.Rect.Dx(), src.Rect.Dy()
	dw, dh := dst.Rect.Dx(), dst.Rect.Dy()
	sums := make([]uint32, 3*dw)
	for j := range dh {
		if ctx.Err() != nil {
			return contextError(ctx)
		}
		y0, y1 := j*k, (j+1)*k
		if j == dh-1 {
			y1 = h
		}
		clear(sums)
		for y := y0; y < y1; y++ {
			yRow := src.Y[y*src.YStride : y*src.YStride+w]
			cRow := (y >> vs) * src.CStride
			cb, cr := src.Cb[cRow:], src.Cr[cRow:]
			for i := range dw {
				x0, x1 := i*k, (i+1)*k
				if i == dw-1 {
					x1 = w
				}
				s := sums[3*i : 3*i+3 : 3*i+3]
				for x := x0; x < x1; x++ {
					s[0] += uint32(yRow[x])
					s[1] += uint32(cb[x>>hs])
					s[2] += uint32(cr[x>>hs])
				}
			}
		}
		out := dst.Pix[j*dst.Stride:]
		for i := range dw {
			cols := k
			if i == dw-1 {
				cols = w - i*k
			}
			n := uint32(cols * (y1 - y0))
			r, g, b := color.YCbCrToRGB(
				uint8((sums[3*i]+n/2)/n),
				uint8((sums[3*i+1]+n/2)/n),
				uint8((sums[3*i+2]+n/2)/n))
			out[4*i], out[4*i+1], out[4*i+2], out[4*i+3] = r, g, b, 0xff
		}
	}
	return nil
}

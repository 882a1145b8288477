package ai

import (
	"cmp"
	"fmt"
	"image"
	"math"
	"slices"
)

// plane is a single-channel float image, row-major.
type plane struct {
	w, h int
	pix  []float64
}

type colorOut struct {
	Hex   string  `json:"hex"`
	Share float64 `json:"share"`
}

type sharpness struct {
	// LaplacianVar is the variance of the 4-neighbour Laplacian of the luma
	// (0–255) over the whole working image.
	LaplacianVar float64 `json:"laplacianVar"`
	// PeakLaplacianVar is the 90th percentile of the same variance over
	// 32×32-pixel tiles: how sharp the sharpest part of the image is.
	PeakLaplacianVar float64 `json:"peakLaplacianVar"`
	// Score maps PeakLaplacianVar to 0–1: peak/(peak+sharpnessHalf).
	Score float64 `json:"score"`
}

type exposure struct {
	Mean          float64 `json:"mean"`          // mean luma, 0–1
	DarkClipped   float64 `json:"darkClipped"`   // share of pixels with luma ≤ 5/255
	BrightClipped float64 `json:"brightClipped"` // share of pixels with luma ≥ 250/255
}

// stats are the measures of one working image.
type stats struct {
	colors    []colorOut
	exposure  exposure
	sharpness sharpness
	luma      plane // composited over white, 0–255
}

const (
	sharpnessHalf = 200.0 // PeakLaplacianVar that scores 0.5
	tileSize      = 32
	maxColors     = 5
	minColorShare = 0.01
	// mergeDistance: histogram cells whose mean colours are closer than this
	// (Euclidean, 8-bit RGB) are one colour, so that a gradient across a cell
	// boundary is not reported twice.
	mergeDistance = 40.0
)

// measure computes every pixel measure of the working image m.
func measure(m *image.RGBA) stats {
	w, h := m.Rect.Dx(), m.Rect.Dy()
	luma := plane{w: w, h: h, pix: make([]float64, w*h)}

	// Colour histogram on 3 bits a channel (512 cells), over opaque pixels.
	type cell struct {
		n       int
		r, g, b float64
	}
	var hist [512]cell
	var opaque, dark, bright int
	var sum float64
	for y := range h {
		row := m.Pix[y*m.Stride : y*m.Stride+4*w]
		for x := range w {
			p := row[4*x : 4*x+4 : 4*x+4]
			r, g, b, a := float64(p[0]), float64(p[1]), float64(p[2]), float64(p[3])
			// Premultiplied over white: c + (255 - a).
			luma.pix[y*w+x] = lumaOf(r+255-a, g+255-a, b+255-a)
			if a < 128 {
				continue
			}
			r, g, b = min(r*255/a, 255), min(g*255/a, 255), min(b*255/a, 255)
			l := lumaOf(r, g, b)
			sum += l
			if l <= 5 {
				dark++
			}
			if l >= 250 {
				bright++
			}
			opaque++
			c := &hist[int(r)>>5<<6|int(g)>>5<<3|int(b)>>5]
			c.n++
			c.r += r
			c.g += g
			c.b += b
		}
	}

	var s stats
	s.luma = luma
	if opaque == 0 {
		// Wholly transparent: judge what a viewer sees, the white behind it.
		for _, l := range luma.pix {
			sum += l
			if l >= 250 {
				bright++
			}
		}
		opaque = len(luma.pix)
	}
	if opaque > 0 {
		s.exposure = exposure{
			Mean:          round3(sum / float64(opaque) / 255),
			DarkClipped:   round3(float64(dark) / float64(opaque)),
			BrightClipped: round3(float64(bright) / float64(opaque)),
		}
	}

	// Merge cells into colours, biggest cells first.
	type colour struct {
		n       int
		r, g, b float64 // sums
	}
	cells := make([]colour, 0, 64)
	for _, c := range hist {
		if c.n > 0 {
			cells = append(cells, colour{c.n, c.r, c.g, c.b})
		}
	}
	slices.SortFunc(cells, func(a, b colour) int { return cmp.Compare(b.n, a.n) })
	var merged []colour
	for _, c := range cells {
		cr, cg, cb := c.r/float64(c.n), c.g/float64(c.n), c.b/float64(c.n)
		joined := false
		for i := range merged {
			m := &merged[i]
			mr, mg, mb := m.r/float64(m.n), m.g/float64(m.n), m.b/float64(m.n)
			if math.Hypot(math.Hypot(cr-mr, cg-mg), cb-mb) < mergeDistance {
				m.n += c.n
				m.r += c.r
				m.g += c.g
				m.b += c.b
				joined = true
				break
			}
		}
		if !joined {
			merged = append(merged, c)
		}
	}
	slices.SortStableFunc(merged, func(a, b colour) int { return cmp.Compare(b.n, a.n) })
	for _, c := range merged {
		share := float64(c.n) / float64(opaque)
		if len(s.colors) == maxColors || share < minColorShare {
			break
		}
		n := float64(c.n)
		s.colors = append(s.colors, colorOut{
			Hex:   fmt.Sprintf("#%02x%02x%02x", clamp8(c.r/n), clamp8(c.g/n), clamp8(c.b/n)),
			Share: round3(share),
		})
	}

	s.sharpness = laplacian(luma)
	return s
}

// lumaOf is Rec. 601 luma, as JPEG defines it, on 8-bit values.
func lumaOf(r, g, b float64) float64 { return 0.299*r + 0.587*g + 0.114*b }

// laplacian measures sharpness on the luma plane; see sharpness.
func laplacian(p plane) sharpness {
	if p.w < 3 || p.h < 3 {
		return sharpness{}
	}
	tw, th := max((p.w-2)/tileSize, 1), max((p.h-2)/tileSize, 1)
	type acc struct{ n, sum, sq float64 }
	tiles := make([]acc, tw*th)
	var all acc
	for y := 1; y < p.h-1; y++ {
		ty := min((y-1)/tileSize, th-1)
		row := p.pix[y*p.w:]
		for x := 1; x < p.w-1; x++ {
			v := 4*row[x] - row[x-1] - row[x+1] - p.pix[(y-1)*p.w+x] - p.pix[(y+1)*p.w+x]
			t := &tiles[ty*tw+min((x-1)/tileSize, tw-1)]
			t.n++
			t.sum += v
			t.sq += v * v
		}
	}
	vars := make([]float64, len(tiles))
	for i, t := range tiles {
		all.n += t.n
		all.sum += t.sum
		all.sq += t.sq
		vars[i] = variance(t.n, t.sum, t.sq)
	}
	slices.Sort(vars)
	peak := vars[int(0.9*float64(len(vars)-1)+0.5)]
	return sharpness{
		LaplacianVar:     round1(variance(all.n, all.sum, all.sq)),
		PeakLaplacianVar: round1(peak),
		Score:            round3(peak / (peak + sharpnessHalf)),
	}
}

func variance(n, sum, sq float64) float64 {
	if n == 0 {
		return 0
	}
	mean := sum / n
	return max(sq/n-mean*mean, 0)
}

func clamp8(v float64) uint8 { return uint8(min(max(math.Round(v), 0), 255)) }

func round1(v float64) float64 { return math.Round(v*10) / 10 }
func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

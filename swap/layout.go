package swap

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// Region is one stretch of an archive made by Pack: either tar framing
// (headers and the padding around them; Path is "") or the contents of
// one regular file (Path is its slash-separated name in the release).
type Region struct {
	Off, Len int64
	Path     string
}

// Layout reads a tar stream and returns its regions in order. Framing and
// file contents alternate, starting and ending with framing, so that the
// i-th region is a file's contents exactly when i is odd; only regular
// files with at least one byte have a region of their own (empty files,
// directories and symlinks are framing). It reads r to its end: the
// regions cover every byte.
//
// A host that knows the layout before the bytes arrive can write each
// file's contents straight into place (see the swarm's tree placement)
// instead of writing an archive and unpacking it.
func Layout(r io.Reader) ([]Region, error) {
	cr := &countReader{r: r}
	tr := tar.NewReader(cr)
	var out []Region
	last := int64(0)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("swap: layout: %w", err)
		}
		if h.Typeflag == tar.TypeGNUSparse || hasSparseRecords(h) {
			return nil, fmt.Errorf("swap: layout: %w: %q is a sparse file", ErrUnsafeArchive, h.Name)
		}
		if h.Typeflag != tar.TypeReg || h.Size <= 0 {
			continue
		}
		name, err := LocalName(h.Name)
		if err != nil {
			return nil, err
		}
		start := cr.n
		out = append(out, Region{Off: last, Len: start - last}, Region{Off: start, Len: h.Size, Path: name})
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return nil, fmt.Errorf("swap: layout %s: %w", h.Name, err)
		}
		if last = start + h.Size; cr.n != last {
			return nil, fmt.Errorf("swap: layout: %q holds %d bytes of the archive for a size of %d", h.Name, cr.n-start, h.Size)
		}
	}
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return nil, fmt.Errorf("swap: layout: %w", err)
	}
	return append(out, Region{Off: last, Len: cr.n - last}), nil
}

// LocalName checks an archive entry's name the way Unpack does before it
// touches the file system, and returns it slash-separated and clean.
func LocalName(name string) (string, error) {
	clean := path.Clean(name)
	if clean == "." || strings.HasPrefix(clean, "/") || clean == ".." || strings.HasPrefix(clean, "../") ||
		strings.ContainsRune(clean, 0) {
		return "", fmt.Errorf("swap: %w: %q is not inside the release", ErrUnsafeArchive, name)
	}
	return clean, nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

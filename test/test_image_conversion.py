"""Image conversion: every supported encoding, row padding, endianness, compressed, failures."""
import array
import struct

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from dysl_ros.nodes.image_conversion import msg_to_rgb, rgb_to_compressed, rgb_to_image
from dysl_ros.runtime.messages import ImageConversionError, compressed_to_rgb, image_to_rgb

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)  # odd sizes catch stride mistakes


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8'])
@pytest.mark.parametrize('padding', [0, 3])
def test_color_encodings_round_trip(encoding, padding):
    msg = rgb_to_image(RGB, encoding=encoding, row_padding=padding)
    channels = 4 if 'a' in encoding else 3
    assert msg.step == 7 * channels + padding
    assert len(msg.data) == msg.step * 5
    out = image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3) and out.flags['C_CONTIGUOUS']
    np.testing.assert_array_equal(out, RGB)
    np.testing.assert_array_equal(msg_to_rgb(msg, use_cv_bridge=False), RGB)


def test_bgr_bytes_are_swapped():
    msg = rgb_to_image(RGB, encoding='bgr8')
    raw = np.frombuffer(msg.data, np.uint8).reshape(5, 7, 3)
    np.testing.assert_array_equal(raw[..., 0], RGB[..., 2])


def test_mono8_with_padding_is_grey_in_every_channel():
    grey = RNG.integers(0, 256, (4, 6), dtype=np.uint8)
    rows = np.zeros((4, 8), np.uint8)
    rows[:, :6] = grey
    msg = Image(height=4, width=6, encoding='mono8', step=8)
    msg.data = array.array('B', rows.tobytes())
    out = image_to_rgb(msg)
    assert out.shape == (4, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


@pytest.mark.parametrize('bigendian', [0, 1])
def test_mono16_respects_endianness(bigendian):
    values = RNG.integers(0, 65536, (3, 4), dtype=np.uint16)
    rows = np.zeros((3, 10), np.uint8)  # 8 bytes of pixels + 2 bytes of padding per row
    rows[:, :8] = values.astype('>u2' if bigendian else '<u2').view(np.uint8).reshape(3, 8)
    msg = Image(height=3, width=4, encoding='mono16', step=10, is_bigendian=bigendian)
    msg.data = array.array('B', rows.tobytes())
    out = image_to_rgb(msg)
    np.testing.assert_array_equal(out[..., 0], (values >> 8).astype(np.uint8))


def test_unsupported_encoding_names_it():
    msg = rgb_to_image(RGB)
    msg.encoding = 'yuv422'
    with pytest.raises(ImageConversionError, match='yuv422') as e:
        image_to_rgb(msg)
    assert e.value.kind == 'encoding'


@pytest.mark.parametrize('field,value', [('step', 5), ('height', 6), ('width', 0),
                                         ('height', 100000)])
def test_inconsistent_sizes_are_size_errors(field, value):
    msg = rgb_to_image(RGB)
    setattr(msg, field, value)
    with pytest.raises(ImageConversionError) as e:
        image_to_rgb(msg)
    assert e.value.kind == 'size'


def test_truncated_data_is_a_size_error():
    msg = rgb_to_image(RGB)
    msg.data = msg.data[:-1]
    with pytest.raises(ImageConversionError, match='data bytes') as e:
        msg_to_rgb(msg, use_cv_bridge=False)
    assert e.value.kind == 'size'


def test_compressed_png_is_lossless_and_jpeg_close():
    png = rgb_to_compressed(RGB, 'png')
    assert isinstance(png, CompressedImage) and png.format == 'png'
    np.testing.assert_array_equal(compressed_to_rgb(png), RGB)
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
    out = msg_to_rgb(rgb_to_compressed(smooth, 'jpeg'))
    assert out.shape == (32, 32, 3)
    assert np.abs(out.astype(int) - smooth).mean() < 4.0


def test_garbage_compressed_is_a_decode_error():
    msg = CompressedImage(format='jpeg')
    msg.data = array.array('B', b'not an image at all')
    with pytest.raises(ImageConversionError) as e:
        compressed_to_rgb(msg)
    assert e.value.kind == 'decode'
    with pytest.raises(ImageConversionError):
        compressed_to_rgb(CompressedImage(format='png'))


@pytest.mark.parametrize('fmt', ['png', 'jpeg'])
def test_compressed_images_too_large_are_refused_before_decoding(fmt):
    """The header's size decides: a small file may decode to gigabytes (16384 x 16384 here;
    the patched header no longer matches the data, so decoding it would fail otherwise)."""
    data = bytearray(rgb_to_compressed(np.zeros((8, 8, 3), np.uint8), fmt).data)
    if fmt == 'png':
        data[16:24] = struct.pack('>II', 16384, 16384)  # IHDR width, height
    else:
        sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF
                   and data[i + 1] in (0xC0, 0xC2))
        data[sof + 5:sof + 9] = struct.pack('>HH', 16384, 16384)  # height, width
    msg = CompressedImage(format=fmt)
    msg.data = array.array('B', bytes(data))
    with pytest.raises(ImageConversionError, match='16384x16384') as e:
        compressed_to_rgb(msg)
    assert e.value.kind == 'size'


def test_builder_rejects_non_rgb_arrays():
    with pytest.raises(ValueError, match='uint8'):
        rgb_to_image(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match='encoding'):
        rgb_to_image(RGB, encoding='yuv422')

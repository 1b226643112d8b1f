using System.Text;

namespace MdtDist.Trellis.Tests.Conditioning;

/// <summary>
/// Writes a minimal ONNX model by hand (protobuf wire format; field numbers from onnx.proto): input <c>image</c>
/// float [1, 3, S, S] → <c>ReduceMean(axes=[1], keepdims=1)</c> → output <c>matte</c> [1, 1, S, S] (opset 13). A stand-in
/// for a matting network: bright regions of the picture get a high matte value.
/// </summary>
internal static class TinyOnnx
{
    public static byte[] ChannelMeanMatting(int size)
    {
        byte[] Shape(params long[] dims) => Concat(dims.Select(d => Msg(1, Varint(1, (ulong)d))).ToArray());
        byte[] ValueInfo(string name, params long[] dims) =>
            Concat(Str(1, name), Msg(2, Msg(1, Concat(Varint(1, 1 /* FLOAT */), Msg(2, Shape(dims))))));
        var attr = Concat(Str(1, "axes"), Varint(8, 1), Varint(20, 7 /* INTS */));
        var keep = Concat(Str(1, "keepdims"), Varint(3, 1), Varint(20, 2 /* INT */));
        var node = Concat(Str(1, "image"), Str(2, "matte"), Str(3, "mean"), Str(4, "ReduceMean"), Msg(5, attr), Msg(5, keep));
        var graph = Concat(Msg(1, node), Str(2, "tiny_matting"), Msg(11, ValueInfo("image", 1, 3, size, size)), Msg(12, ValueInfo("matte", 1, 1, size, size)));
        var opset = Concat(Str(1, ""), Varint(2, 13));
        return Concat(Varint(1, 7 /* ir_version */), Str(2, "mdtdist-tests"), Msg(7, graph), Msg(8, opset));
    }

    private static byte[] Concat(params byte[][] parts) => parts.SelectMany(p => p).ToArray();

    private static byte[] Key(int field, int wire) => RawVarint((ulong)((field << 3) | wire));

    private static byte[] RawVarint(ulong v)
    {
        var list = new List<byte>();
        do
        {
            byte b = (byte)(v & 0x7F);
            v >>= 7;
            if (v != 0) b |= 0x80;
            list.Add(b);
        } while (v != 0);
        return list.ToArray();
    }

    private static byte[] Varint(int field, ulong v) => Concat(Key(field, 0), RawVarint(v));

    private static byte[] Msg(int field, byte[] body) => Concat(Key(field, 2), RawVarint((ulong)body.Length), body);

    private static byte[] Str(int field, string s) => Msg(field, Encoding.UTF8.GetBytes(s));
}

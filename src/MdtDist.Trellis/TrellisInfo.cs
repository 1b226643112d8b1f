namespace MdtDist.Trellis;

/// <summary>Constants of the released TRELLIS models.</summary>
public static class TrellisInfo
{
    /// <summary>TRELLIS passes 1000·t to its networks.</summary>
    public const double TimeScale = 1000.0;
}

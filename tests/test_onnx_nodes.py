"""The ONNX backend node tests as a conformance suite for graphnet's ops.

Every test case onnx brings (its node-case generators, and the model folders its wheel ships:
PyTorch-converted, PyTorch-operator, simple) whose ops `graphnet.testing.onnx_nodes` has rules for is
translated to a graphnet graph and run on the numpy and LLVM backends (OpenCL on a few image cases),
its outputs compared with ONNX's expected outputs at ONNX's tolerances (rtol 1e-3, atol 1e-7) and
dtypes. A case the translator cannot express exactly is skipped with its reason, except those listed
in MUST_TRANSLATE: there a translation that stops working fails.
"""
import re

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from graphnet.testing import onnx_nodes as on  # noqa: E402
from graphnet.testing.oracle import opencl_available  # noqa: E402

pytestmark = pytest.mark.usefixtures("private_cache")

# The cases that translate (without their "test_" prefix), by the op they test ("composite": a
# model of several nodes, such as an op's "_expanded" function body).
MUST_TRANSLATE_BY_OP = """
    Abs: abs
    Add: add add_bcast add_int16 add_int8 add_uint16 add_uint32 add_uint64 add_uint8 operator_add_broadcast
        operator_add_size1_broadcast operator_add_size1_right_broadcast operator_add_size1_singleton_broadcast
    ArgMax: argmax_default_axis_example argmax_default_axis_example_select_last_index argmax_default_axis_random
        argmax_default_axis_random_select_last_index argmax_keepdims_example
        argmax_keepdims_example_select_last_index argmax_keepdims_random
        argmax_keepdims_random_select_last_index argmax_negative_axis_keepdims_example
        argmax_negative_axis_keepdims_example_select_last_index argmax_negative_axis_keepdims_random
        argmax_negative_axis_keepdims_random_select_last_index argmax_no_keepdims_example
        argmax_no_keepdims_example_select_last_index argmax_no_keepdims_random
        argmax_no_keepdims_random_select_last_index
    ArgMin: argmin_default_axis_example argmin_default_axis_example_select_last_index argmin_default_axis_random
        argmin_default_axis_random_select_last_index argmin_keepdims_example
        argmin_keepdims_example_select_last_index argmin_keepdims_random
        argmin_keepdims_random_select_last_index argmin_negative_axis_keepdims_example
        argmin_negative_axis_keepdims_example_select_last_index argmin_negative_axis_keepdims_random
        argmin_negative_axis_keepdims_random_select_last_index argmin_no_keepdims_example
        argmin_no_keepdims_example_select_last_index argmin_no_keepdims_random
        argmin_no_keepdims_random_select_last_index
    AveragePool: AvgPool2d AvgPool2d_stride averagepool_1d_default averagepool_2d_ceil
        averagepool_2d_ceil_last_window_starts_on_pad averagepool_2d_default averagepool_2d_dilations
        averagepool_2d_pads
        averagepool_2d_pads_count_include_pad averagepool_2d_precomputed_pads
        averagepool_2d_precomputed_pads_count_include_pad averagepool_2d_precomputed_same_upper
        averagepool_2d_precomputed_strides averagepool_2d_same_lower averagepool_2d_same_upper
        averagepool_2d_strides
    BatchNormalization: BatchNorm1d_3d_input_eval BatchNorm2d_eval BatchNorm2d_momentum_eval BatchNorm3d_eval
        BatchNorm3d_momentum_eval batchnorm_epsilon batchnorm_epsilon_training_mode batchnorm_example
        batchnorm_example_training_mode
    Cast: cast_DOUBLE_to_FLOAT cast_FLOAT_to_DOUBLE
    CastLike: castlike_DOUBLE_to_FLOAT castlike_FLOAT_to_DOUBLE celu_expanded elu_default_expanded_ver18
        elu_example_expanded_ver18 elu_expanded_ver18 gelu_default_1_expanded gelu_default_2_expanded
        gelu_tanh_1_expanded gelu_tanh_2_expanded hardsigmoid_default_expanded_ver18
        hardsigmoid_example_expanded_ver18 hardsigmoid_expanded_ver18 leakyrelu_default_expanded
        leakyrelu_example_expanded leakyrelu_expanded prelu_broadcast_expanded prelu_example_expanded
        reduce_l2_default_axes_keepdims_example_expanded reduce_l2_default_axes_keepdims_random_expanded
        reduce_l2_do_not_keepdims_example_expanded reduce_l2_do_not_keepdims_random_expanded
        reduce_l2_empty_set_expanded reduce_l2_keep_dims_example_expanded reduce_l2_keep_dims_random_expanded
        reduce_l2_negative_axes_keep_dims_example_expanded reduce_l2_negative_axes_keep_dims_random_expanded
        reduce_log_sum_exp_default_axes_keepdims_example_expanded
        reduce_log_sum_exp_default_axes_keepdims_random_expanded reduce_log_sum_exp_do_not_keepdims_example_expanded
        reduce_log_sum_exp_do_not_keepdims_random_expanded reduce_log_sum_exp_empty_set_expanded
        reduce_log_sum_exp_keepdims_example_expanded reduce_log_sum_exp_keepdims_random_expanded
        reduce_log_sum_exp_negative_axes_keepdims_example_expanded
        reduce_log_sum_exp_negative_axes_keepdims_random_expanded relu_expanded_ver18 selu_default_expanded_ver18
        selu_example_expanded_ver18 selu_expanded_ver18 shrink_hard_expanded_ver18 shrink_soft_expanded_ver18
        softplus_example_expanded_ver18 softplus_expanded_ver18 softsign_example_expanded_ver18
        softsign_expanded_ver18 swish_expanded thresholdedrelu_default_expanded_ver18
        thresholdedrelu_example_expanded_ver18 thresholdedrelu_expanded_ver18
    Ceil: ceil ceil_example
    Clip: clip clip_default_inbounds clip_default_int8_inbounds clip_default_int8_max clip_default_int8_min
        clip_default_max clip_default_min clip_example clip_inbounds clip_min_greater_than_max clip_outbounds
        clip_splitbounds operator_clip
    Concat: concat_1d_axis_0 concat_1d_axis_negative_1 concat_2d_axis_0 concat_2d_axis_1
        concat_2d_axis_negative_1 concat_2d_axis_negative_2 concat_3d_axis_0 concat_3d_axis_1 concat_3d_axis_2
        concat_3d_axis_negative_1 concat_3d_axis_negative_2 concat_3d_axis_negative_3 operator_concat2
    Constant: constant
    Conv: Conv1d Conv1d_dilated Conv1d_groups Conv1d_pad1 Conv1d_pad1size1 Conv1d_pad2 Conv1d_pad2size1
        Conv1d_stride Conv2d Conv2d_depthwise Conv2d_depthwise_padded Conv2d_depthwise_strided
        Conv2d_depthwise_with_multiplier Conv2d_dilated Conv2d_groups Conv2d_groups_thnn Conv2d_no_bias
        Conv2d_padding Conv2d_strided basic_conv_with_padding basic_conv_without_padding conv_with_autopad_same
        conv_with_strides_and_asymmetric_padding conv_with_strides_no_padding conv_with_strides_padding
        operator_conv
    ConvTranspose: ConvTranspose2d ConvTranspose2d_no_bias convtranspose convtranspose_1d convtranspose_autopad_same
        convtranspose_dilations convtranspose_group_2 convtranspose_group_2_image_3 convtranspose_kernel_shape
        convtranspose_output_shape convtranspose_pad convtranspose_pads operator_convtranspose
    CumSum: cumsum_1d cumsum_1d_exclusive cumsum_1d_int32_exclusive cumsum_1d_reverse
        cumsum_1d_reverse_exclusive cumsum_2d_axis_0 cumsum_2d_axis_1 cumsum_2d_int32 cumsum_2d_negative_axis
    Div: div div_bcast div_example div_int16 div_int32_trunc div_int8 div_uint16 div_uint32 div_uint64 div_uint8
    Dropout: dropout_default dropout_default_old dropout_default_ratio dropout_random_old
    Elu: ELU elu elu_default elu_example
    Equal: equal equal_bcast equal_int16 equal_int8 equal_uint16 equal_uint32 equal_uint64 equal_uint8
    Erf: erf
    Exp: exp exp_example operator_exp
    Expand: expand_dim_changed expand_dim_unchanged expand_shape_model1 expand_shape_model2 expand_shape_model3
        expand_shape_model4
    Flatten: flatten_axis0 flatten_axis1 flatten_axis2 flatten_axis3 flatten_default_axis flatten_negative_axis1
        flatten_negative_axis2 flatten_negative_axis3 flatten_negative_axis4 operator_flatten operator_view
    Floor: floor floor_example
    Gather: Embedding Embedding_sparse gather_0 gather_1 gather_2d_indices gather_negative_indices
    Gelu: gelu_default_1 gelu_default_2 gelu_tanh_1 gelu_tanh_2
    Gemm: Linear gemm_all_attributes gemm_alpha gemm_beta gemm_default_matrix_bias gemm_default_no_bias
        gemm_default_scalar_bias gemm_default_single_elem_vector_bias gemm_default_vector_bias
        gemm_default_zero_bias gemm_transposeA gemm_transposeB
    GlobalAveragePool: globalaveragepool globalaveragepool_precomputed
    GlobalMaxPool: globalmaxpool globalmaxpool_precomputed
    Greater: greater greater_bcast greater_int16 greater_int8 greater_uint16 greater_uint32 greater_uint64
        greater_uint8
    GreaterOrEqual: greater_equal greater_equal_bcast greater_equal_int16 greater_equal_int8
        greater_equal_uint16 greater_equal_uint32 greater_equal_uint64 greater_equal_uint8
    HardSigmoid: hardsigmoid hardsigmoid_default hardsigmoid_example
    HardSwish: hardswish
    Identity: identity
    LayerNormalization: layer_normalization_2d_axis0 layer_normalization_2d_axis1
        layer_normalization_2d_axis_negative_1 layer_normalization_2d_axis_negative_2
        layer_normalization_3d_axis0_epsilon layer_normalization_3d_axis1_epsilon
        layer_normalization_3d_axis2_epsilon layer_normalization_3d_axis_negative_1_epsilon
        layer_normalization_3d_axis_negative_2_epsilon layer_normalization_3d_axis_negative_3_epsilon
        layer_normalization_4d_axis0 layer_normalization_4d_axis1 layer_normalization_4d_axis2
        layer_normalization_4d_axis3 layer_normalization_4d_axis_negative_1 layer_normalization_4d_axis_negative_2
        layer_normalization_4d_axis_negative_3 layer_normalization_4d_axis_negative_4
        layer_normalization_default_axis
    LeakyRelu: LeakyReLU LeakyReLU_with_negval leakyrelu leakyrelu_default leakyrelu_example
    Less: less less_bcast less_int16 less_int8 less_uint16 less_uint32 less_uint64 less_uint8
    LessOrEqual: less_equal less_equal_bcast less_equal_int16 less_equal_int8 less_equal_uint16
        less_equal_uint32 less_equal_uint64 less_equal_uint8
    Log: log log_example
    LogSoftmax: LogSoftmax log_softmax_dim3 log_softmax_lastdim logsoftmax_axis_0 logsoftmax_axis_1
        logsoftmax_axis_2 logsoftmax_default_axis logsoftmax_example_1 logsoftmax_large_number
        logsoftmax_negative_axis
    MatMul: matmul_1d_1d matmul_1d_3d matmul_2d matmul_3d matmul_4d matmul_4d_1d matmul_bcast
    Max: max_example max_float32 max_float64 max_int16 max_int32 max_int64 max_int8 max_one_input max_two_inputs
        max_uint16 max_uint32 max_uint64 max_uint8 operator_max
    MaxPool: MaxPool1d MaxPool1d_stride MaxPool1d_stride_padding_dilation MaxPool2d
        MaxPool2d_stride_padding_dilation maxpool_1d_default maxpool_2d_ceil maxpool_2d_ceil_output_size_reduce_by_one
        maxpool_2d_default maxpool_2d_dilations maxpool_2d_pads maxpool_2d_precomputed_pads
        maxpool_2d_precomputed_same_upper maxpool_2d_precomputed_strides maxpool_2d_same_lower
        maxpool_2d_same_upper maxpool_2d_strides operator_maxpool
    Mean: mean_example mean_one_input mean_two_inputs
    Min: min_example min_float32 min_float64 min_int16 min_int32 min_int64 min_int8 min_one_input min_two_inputs
        min_uint16 min_uint32 min_uint64 min_uint8 operator_min
    Mod: mod_broadcast mod_float32_mixed_sign_fmod_0 mod_float64_mixed_sign_fmod_0
        mod_float_edge_cases_fmod_0_float32 mod_float_edge_cases_fmod_0_float64 mod_mixed_sign_int16
        mod_mixed_sign_int32 mod_mixed_sign_int64 mod_mixed_sign_int8 mod_uint16 mod_uint32 mod_uint64 mod_uint8
    Mul: mul mul_bcast mul_example mul_int16 mul_int8 mul_uint16 mul_uint32 mul_uint64 mul_uint8
    Neg: neg neg_example
    PRelu: PReLU_1d PReLU_1d_multiparam PReLU_2d PReLU_2d_multiparam PReLU_3d PReLU_3d_multiparam
        prelu_broadcast prelu_example
    Pad: ConstantPad2d ReflectionPad2d ReplicationPad2d ZeroPad2d constant_pad constant_pad_axes
        constant_pad_negative_axes edge_pad operator_pad reflect_pad wrap_pad
    Pow: operator_pow pow pow_bcast_array pow_bcast_scalar pow_example pow_types_float32_int32
        pow_types_float32_int64 pow_types_float32_uint32 pow_types_float32_uint64
    Reciprocal: reciprocal reciprocal_example
    ReduceL1: reduce_l1_default_axes_keepdims_example reduce_l1_default_axes_keepdims_random
        reduce_l1_do_not_keepdims_example reduce_l1_do_not_keepdims_random reduce_l1_empty_set
        reduce_l1_keep_dims_example reduce_l1_keep_dims_random reduce_l1_negative_axes_keep_dims_example
        reduce_l1_negative_axes_keep_dims_random
    ReduceL2: reduce_l2_default_axes_keepdims_example reduce_l2_default_axes_keepdims_random
        reduce_l2_do_not_keepdims_example reduce_l2_do_not_keepdims_random reduce_l2_empty_set
        reduce_l2_keep_dims_example reduce_l2_keep_dims_random reduce_l2_negative_axes_keep_dims_example
        reduce_l2_negative_axes_keep_dims_random
    ReduceLogSum: reduce_log_sum_asc_axes reduce_log_sum_default reduce_log_sum_desc_axes
        reduce_log_sum_empty_set reduce_log_sum_negative_axes
    ReduceLogSumExp: reduce_log_sum_exp_default_axes_keepdims_example
        reduce_log_sum_exp_default_axes_keepdims_random reduce_log_sum_exp_do_not_keepdims_example
        reduce_log_sum_exp_do_not_keepdims_random reduce_log_sum_exp_empty_set
        reduce_log_sum_exp_keepdims_example reduce_log_sum_exp_keepdims_random
        reduce_log_sum_exp_negative_axes_keepdims_example reduce_log_sum_exp_negative_axes_keepdims_random
    ReduceMax: reduce_max_default_axes_keepdim_example reduce_max_default_axes_keepdims_random
        reduce_max_do_not_keepdims_example reduce_max_do_not_keepdims_random reduce_max_empty_set
        reduce_max_keepdims_example reduce_max_keepdims_random reduce_max_negative_axes_keepdims_example
        reduce_max_negative_axes_keepdims_random
    ReduceMean: operator_reduced_mean operator_reduced_mean_keepdim reduce_mean_default_axes_keepdims_example
        reduce_mean_default_axes_keepdims_random reduce_mean_do_not_keepdims_example
        reduce_mean_do_not_keepdims_random reduce_mean_keepdims_example reduce_mean_keepdims_random
        reduce_mean_negative_axes_keepdims_example reduce_mean_negative_axes_keepdims_random
    ReduceMin: reduce_min_default_axes_keepdims_example reduce_min_default_axes_keepdims_random
        reduce_min_do_not_keepdims_example reduce_min_do_not_keepdims_random reduce_min_empty_set
        reduce_min_keepdims_example reduce_min_keepdims_random reduce_min_negative_axes_keepdims_example
        reduce_min_negative_axes_keepdims_random
    ReduceProd: reduce_prod_default_axes_keepdims_example reduce_prod_default_axes_keepdims_random
        reduce_prod_do_not_keepdims_example reduce_prod_do_not_keepdims_random reduce_prod_empty_set
        reduce_prod_keepdims_example reduce_prod_keepdims_random reduce_prod_negative_axes_keepdims_example
        reduce_prod_negative_axes_keepdims_random
    ReduceSum: operator_reduced_sum operator_reduced_sum_keepdim reduce_sum_default_axes_keepdims_example
        reduce_sum_default_axes_keepdims_random reduce_sum_do_not_keepdims_example
        reduce_sum_do_not_keepdims_random reduce_sum_empty_axes_input_noop
        reduce_sum_empty_axes_input_noop_example reduce_sum_empty_set reduce_sum_empty_set_non_reduced_axis_zero
        reduce_sum_keepdims_example reduce_sum_keepdims_random reduce_sum_negative_axes_keepdims_example
        reduce_sum_negative_axes_keepdims_random
    ReduceSumSquare: reduce_sum_square_default_axes_keepdims_example
        reduce_sum_square_default_axes_keepdims_random reduce_sum_square_do_not_keepdims_example
        reduce_sum_square_do_not_keepdims_random reduce_sum_square_empty_set reduce_sum_square_keepdims_example
        reduce_sum_square_keepdims_random reduce_sum_square_negative_axes_keepdims_example
        reduce_sum_square_negative_axes_keepdims_random
    Relu: ReLU relu single_relu_model
    Reshape: reshape_allowzero_reordered reshape_extended_dims reshape_negative_dim
        reshape_negative_extended_dims reshape_one_dim reshape_reduced_dims reshape_reordered_all_dims
        reshape_reordered_last_dims reshape_zero_and_negative_dim reshape_zero_dim
    Resize: resize_downsample_scales_cubic resize_downsample_scales_cubic_A_n0p5_exclude_outside
        resize_downsample_scales_cubic_align_corners resize_downsample_scales_cubic_antialias
        resize_downsample_scales_linear resize_downsample_scales_linear_align_corners
        resize_downsample_scales_linear_antialias resize_downsample_scales_linear_half_pixel_symmetric
        resize_downsample_scales_nearest resize_downsample_sizes_cubic resize_downsample_sizes_cubic_antialias
        resize_downsample_sizes_linear_antialias resize_downsample_sizes_linear_pytorch_half_pixel
        resize_downsample_sizes_nearest resize_downsample_sizes_nearest_not_larger
        resize_downsample_sizes_nearest_not_smaller resize_tf_crop_and_resize resize_tf_crop_and_resize_axes_2_3
        resize_tf_crop_and_resize_axes_3_2 resize_tf_crop_and_resize_extrapolation_value
        resize_upsample_scales_cubic resize_upsample_scales_cubic_A_n0p5_exclude_outside
        resize_upsample_scales_cubic_align_corners resize_upsample_scales_cubic_asymmetric
        resize_upsample_scales_linear resize_upsample_scales_linear_align_corners
        resize_upsample_scales_linear_half_pixel_symmetric resize_upsample_scales_nearest
        resize_upsample_scales_nearest_axes_2_3 resize_upsample_scales_nearest_axes_3_2 resize_upsample_sizes_cubic
        resize_upsample_sizes_nearest resize_upsample_sizes_nearest_axes_2_3 resize_upsample_sizes_nearest_axes_3_2
        resize_upsample_sizes_nearest_ceil_half_pixel resize_upsample_sizes_nearest_floor_align_corners
        resize_upsample_sizes_nearest_not_larger resize_upsample_sizes_nearest_not_smaller
        resize_upsample_sizes_nearest_round_prefer_ceil_asymmetric
    Round: round
    Selu: SELU operator_selu selu selu_default selu_example
    Shape: shape shape_clip_end shape_clip_start shape_end_1 shape_end_negative_1 shape_example shape_start_1
        shape_start_1_end_2 shape_start_1_end_negative_1 shape_start_greater_than_end shape_start_negative_1
    Sigmoid: Sigmoid sigmoid sigmoid_example
    Sign: sign sign_model
    Slice: slice slice_default_axes slice_default_steps slice_end_out_of_bounds slice_neg slice_neg_steps
        slice_negative_axes slice_start_out_of_bounds
    Softmax: Softmax softmax_axis_0 softmax_axis_1 softmax_axis_2 softmax_default_axis softmax_example
        softmax_functional_dim3 softmax_large_number softmax_lastdim softmax_negative_axis
    Softplus: Softplus softplus softplus_example
    Softsign: softsign softsign_example
    Split: operator_chunk split_1d_uneven_split_opset18 split_2d_uneven_split_opset18
        split_equal_parts_1d_opset13 split_equal_parts_1d_opset18 split_equal_parts_2d
        split_equal_parts_2d_opset13 split_equal_parts_default_axis_opset13
        split_equal_parts_default_axis_opset18 split_variable_parts_1d_opset13 split_variable_parts_1d_opset18
        split_variable_parts_2d_opset13 split_variable_parts_2d_opset18
        split_variable_parts_default_axis_opset13 split_variable_parts_default_axis_opset18
        split_zero_size_splits_opset13 split_zero_size_splits_opset18
    Sqrt: operator_sqrt sqrt sqrt_example
    Squeeze: squeeze squeeze_negative_axes
    Sub: sub sub_bcast sub_example sub_int16 sub_int8 sub_uint16 sub_uint32 sub_uint64 sub_uint8
    Sum: sum_example sum_one_input sum_two_inputs
    Tanh: Tanh tanh tanh_example
    Tile: tile tile_precomputed
    Transpose: operator_permute2 transpose_all_permutations_0 transpose_all_permutations_1
        transpose_all_permutations_2 transpose_all_permutations_3 transpose_all_permutations_4
        transpose_all_permutations_5 transpose_default
    Unsqueeze: unsqueeze_axis_0 unsqueeze_axis_1 unsqueeze_axis_2 unsqueeze_negative_axes unsqueeze_three_axes
        unsqueeze_two_axes unsqueeze_unsorted_axes
    Upsample: upsample_nearest
    Where: where_example where_long_example
    composite: AvgPool1d AvgPool1d_stride GLU GLU_dim Linear_no_bias PixelShuffle PoissonNLLLLoss_no_reduce
        Softmin Softsign castlike_DOUBLE_to_FLOAT_expanded castlike_FLOAT_to_DOUBLE_expanded
        clip_default_inbounds_expanded clip_default_int8_inbounds_expanded clip_default_int8_max_expanded
        clip_default_int8_min_expanded clip_default_max_expanded clip_default_min_expanded clip_example_expanded
        clip_expanded clip_inbounds_expanded clip_min_greater_than_max_expanded clip_outbounds_expanded
        clip_splitbounds_expanded hardswish_expanded logsoftmax_axis_0_expanded logsoftmax_axis_0_expanded_ver18
        logsoftmax_axis_1_expanded logsoftmax_axis_1_expanded_ver18 logsoftmax_axis_2_expanded
        logsoftmax_axis_2_expanded_ver18 logsoftmax_default_axis_expanded logsoftmax_default_axis_expanded_ver18
        logsoftmax_example_1_expanded logsoftmax_example_1_expanded_ver18 logsoftmax_large_number_expanded
        logsoftmax_large_number_expanded_ver18 logsoftmax_negative_axis_expanded
        logsoftmax_negative_axis_expanded_ver18 mish_expanded mvn_expanded mvn_expanded_ver18
        operator_addconstant operator_addmm operator_basic operator_index operator_mm operator_non_float_params
        operator_params operator_repeat operator_repeat_dim_overflow operator_symbolic_override_nested
        reduce_l1_default_axes_keepdims_example_expanded reduce_l1_default_axes_keepdims_random_expanded
        reduce_l1_do_not_keepdims_example_expanded reduce_l1_do_not_keepdims_random_expanded
        reduce_l1_empty_set_expanded reduce_l1_keep_dims_example_expanded reduce_l1_keep_dims_random_expanded
        reduce_l1_negative_axes_keep_dims_example_expanded reduce_l1_negative_axes_keep_dims_random_expanded
        reduce_log_sum_asc_axes_expanded reduce_log_sum_default_expanded reduce_log_sum_desc_axes_expanded
        reduce_log_sum_empty_set_expanded reduce_log_sum_negative_axes_expanded
        reduce_sum_square_default_axes_keepdims_example_expanded
        reduce_sum_square_default_axes_keepdims_random_expanded
        reduce_sum_square_do_not_keepdims_example_expanded reduce_sum_square_do_not_keepdims_random_expanded
        reduce_sum_square_empty_set_expanded reduce_sum_square_keepdims_example_expanded
        reduce_sum_square_keepdims_random_expanded reduce_sum_square_negative_axes_keepdims_example_expanded
        reduce_sum_square_negative_axes_keepdims_random_expanded softmax_axis_0_expanded
        softmax_axis_0_expanded_ver18 softmax_axis_1_expanded softmax_axis_1_expanded_ver18
        softmax_axis_2_expanded softmax_axis_2_expanded_ver18 softmax_default_axis_expanded
        softmax_default_axis_expanded_ver18 softmax_example_expanded softmax_example_expanded_ver18
        softmax_large_number_expanded softmax_large_number_expanded_ver18 softmax_negative_axis_expanded
        softmax_negative_axis_expanded_ver18
"""


def _by_op(text: str) -> dict[str, set[str]]:
    """{op: case names} from lines "Op: name name ...", continued on lines indented further."""
    entries = re.split(r"\n(?=    \S)", text.strip("\n"))
    return {op.strip(): {"test_" + name for name in names.split()}
            for op, names in (entry.split(":", 1) for entry in entries)}


MUST_TRANSLATE = set().union(*_by_op(MUST_TRANSLATE_BY_OP).values())
# OpenCL runs these image cases too (its conv and pooling kernels; the whole list would take minutes)
OPENCL_CASES = ["test_Conv2d_groups", "test_Conv2d_depthwise_strided", "test_conv_with_autopad_same",
                "test_conv_with_strides_and_asymmetric_padding", "test_maxpool_2d_same_lower", "test_maxpool_2d_ceil",
                "test_MaxPool2d_stride_padding_dilation", "test_averagepool_2d_pads_count_include_pad",
                "test_averagepool_2d_precomputed_same_upper",
                "test_convtranspose_group_2", "test_convtranspose_output_shape",
                "test_resize_downsample_scales_cubic_antialias", "test_resize_tf_crop_and_resize_extrapolation_value",
                "test_globalmaxpool", "test_concat_3d_axis_negative_2"]


def _collect() -> dict[str, on.Case]:
    """The cases whose every node has a rule, by name (later folders' duplicates dropped)."""
    cases = on.generated_cases()
    for directory in on.data_dirs():
        cases += on.stored_cases(directory)
    found = {}
    for case in cases:
        if set(case.op_types) <= set(on.RULES):
            found.setdefault(case.name, case)
    return found


CASES = _collect()


_RESULTS: dict[tuple[str, str], list] = {}


def _results(name: str, backend: str) -> list:
    """The case's outputs (or exception) per data set. All cases (on OpenCL, the listed ones) are
    compiled together, as one function, on first use: a compile per case costs twice the file's time
    (`on.run(case.model, inputs, backend)` runs one alone; a case that fails only beside the others
    shows a compiler bug too)."""
    if (name, backend) not in _RESULTS:
        names = OPENCL_CASES if backend == "opencl" else sorted(CASES)
        runs = [(n, CASES[n].model, inputs) for n in names for inputs, _ in CASES[n].data_sets]
        results = on.run_many([(model, inputs) for _, model, inputs in runs], backend)
        for n in names:
            _RESULTS[n, backend] = []
        for (n, _, _), result in zip(runs, results):
            _RESULTS[n, backend].append(result)
    return _RESULTS[name, backend]


def _check(name: str, backend: str) -> None:
    """The case's outputs on `backend` equal ONNX's expected outputs, data set by data set."""
    case = CASES[name]
    for (_, expected), got in zip(case.data_sets, _results(name, backend)):
        if isinstance(got, on.Unsupported):
            if name in MUST_TRANSLATE:
                pytest.fail(f"{name} is in MUST_TRANSLATE but does not translate: {got}")
            pytest.skip(str(got))
        if isinstance(got, Exception):
            raise got
        assert len(got) == len(expected)
        for i, (g, e) in enumerate(zip(got, expected)):
            e = np.asarray(on.to_array(e))
            assert g.dtype == e.dtype and g.shape == e.shape, \
                f"output {i}: {g.dtype}{g.shape}, ONNX's {e.dtype}{e.shape}"
            np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol, err_msg=f"output {i}")


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_case(name, backend):
    _check(name, backend)


@pytest.mark.parametrize("name", OPENCL_CASES)
def test_onnx_case_opencl(name):
    if not opencl_available():
        pytest.skip("no OpenCL platform (pyopencl and a device)")
    _check(name, "opencl")


def test_must_translate_names_are_cases():
    """Every listed name is a case this onnx brings (a misspelt name would never be checked)."""
    missing = sorted(MUST_TRANSLATE - set(CASES))
    assert not missing, f"not among onnx {onnx.__version__}'s cases: {missing}"
    assert set(OPENCL_CASES) <= MUST_TRANSLATE


def test_unsupported_names_its_reason():
    """What graphnet lacks is refused with the reason, never approximated."""
    reasons = {}
    for name in ("test_maxpool_2d_uint8", "test_maxpool_with_argmax_2d_precomputed_pads", "test_Conv3d",
                 "test_max_float16"):
        case = CASES[name]
        with pytest.raises(on.Unsupported) as info:
            on.translate(case.model, case.data_sets[0][0])
        reasons[name] = str(info.value)
    assert "uint8" in reasons["test_maxpool_2d_uint8"]
    assert "Indices" in reasons["test_maxpool_with_argmax_2d_precomputed_pads"]
    assert "3-D" in reasons["test_Conv3d"]
    assert "float16" in reasons["test_max_float16"]
